"""Paired bootstrap: exact on degenerate cases, the normal-theory width on a large sample."""

import numpy as np
import pytest

from common.errors import ConfigError
from common.stats import paired_bootstrap


def test_identical_and_opposite_models():
  x = np.random.default_rng(0).integers(0, 2, (3, 200))
  same = paired_bootstrap(x, x)
  assert same == {"mean": 0.0, "lo": 0.0, "hi": 0.0, "n": 200}
  out = paired_bootstrap(np.ones((3, 50)), np.zeros((3, 50)))
  assert out["mean"] == out["lo"] == out["hi"] == 1.0


def test_interval_matches_normal_theory_and_pairing_narrows_it():
  rng = np.random.default_rng(1)
  n = 4000
  base = rng.random(n) < 0.8
  flip = rng.random(n) < 0.1  # b differs from a on 10% of the examples, half each way
  a = base.astype(float)
  b = np.where(flip, 1 - a, a)
  out = paired_bootstrap(a, b, n_boot=4000)
  d = a - b
  half = 1.96 * d.std() / np.sqrt(n)
  assert out["mean"] == pytest.approx(d.mean())
  assert (out["hi"] - out["lo"]) / 2 == pytest.approx(half, rel=0.1)
  # unpaired, the two accuracies' own noise (std ~0.4 each) would give a much wider interval
  assert (out["hi"] - out["lo"]) / 2 < 0.6 * 1.96 * np.sqrt(a.var() / n + b.var() / n)


def test_rejects_mismatched_shapes_and_bad_level():
  with pytest.raises(ConfigError, match="equal"):
    paired_bootstrap(np.zeros(5), np.zeros(6))
  with pytest.raises(ConfigError, match="level"):
    paired_bootstrap(np.zeros(5), np.zeros(5), level=1.5)
