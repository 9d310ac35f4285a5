"""Paired bootstrap confidence intervals over test examples."""

from __future__ import annotations

import numpy as np

from common.errors import ConfigError


def paired_bootstrap(a, b, *, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> dict:
  """Mean of a - b over the last axis (examples) with a percentile bootstrap interval.

  `a` and `b` hold per-example scores (e.g. 0/1 correctness) of two models on the same examples,
  shape [..., n]; leading axes are averaged first (e.g. setups), so the interval is for the
  mean over them, resampling examples jointly (the pairing keeps correlated errors from
  inflating the interval). Returns {"mean", "lo", "hi", "n"}.
  """
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if a.shape != b.shape or a.ndim == 0 or a.shape[-1] == 0:
    raise ConfigError(f"paired_bootstrap needs two equal, non-empty shapes, got {a.shape} and {b.shape}")
  if not 0 < level < 1:
    raise ConfigError(f"level must be in (0, 1), got {level}")
  d = (a - b).reshape(-1, a.shape[-1]).mean(0)
  n = d.shape[0]
  idx = np.random.default_rng(seed).integers(0, n, (n_boot, n))
  boots = d[idx].mean(1)
  tail = 100 * (1 - level) / 2
  return {
    "mean": float(d.mean()),
    "lo": float(np.percentile(boots, tail)),
    "hi": float(np.percentile(boots, 100 - tail)),
    "n": int(n),
  }
