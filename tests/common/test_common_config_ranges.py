"""Key by key: every number in every technique's config is range-checked at the entry point.

For each numeric key of each technique's quick config, three values no key means: NaN (floats),
-1 (a negative count, size, rate or weight) and 10**30 (a count no run can reach). Each must be
refused by the technique's `validate` with a ConfigError naming the key, before anything runs.
A key that legitimately takes one of them is listed in ALLOWED, with the reason.
"""

from __future__ import annotations

import importlib
import math

import pytest

from common import app
from common.errors import ConfigError

TECHNIQUES = ("agile", "coinfer", "subnets", "branching", "offload")
ALLOWED = {
  ("offload", "dqn.history_intervals", -1): "-1 = no interval history (the original's nhist2 < 0)",
}


def _leaves(node, prefix=""):
  for k, v in node.items():
    if hasattr(v, "items"):
      yield from _leaves(v, f"{prefix}{k}.")
    else:
      yield f"{prefix}{k}", v


def _cases():
  for tech in TECHNIQUES:
    for key, value in _leaves(app.load_config_file(f"{tech}/configs/quick.py")):
      if isinstance(value, bool) or not isinstance(value, int | float):
        continue
      for bad in (math.nan, -1.0) if isinstance(value, float) else (-1, 10**30):
        if (tech, key, bad) not in ALLOWED:
          yield tech, key, bad


CASES = list(_cases())


def test_every_numeric_key_is_covered():
  keys = {(t, k) for t, k, _ in CASES}
  assert len(keys) > 150, len(keys)  # the five quick configs' numeric keys


@pytest.mark.parametrize("tech", TECHNIQUES)
def test_every_numeric_key_refuses_nan_negative_and_huge(tech):
  pipeline = importlib.import_module(f"{tech}.pipeline")
  accepted = []
  for t, key, bad in CASES:
    if t != tech:
      continue
    config = app.load_config_file(f"{tech}/configs/quick.py")
    *parents, leaf = key.split(".")
    node = config
    for part in parents:
      node = node[part]
    node[leaf] = type(node[leaf])(bad) if not (isinstance(bad, float) and math.isnan(bad)) else bad
    try:
      pipeline.validate(config)
    except ConfigError as e:
      assert key.rsplit(".", 1)[-1] in str(e), (key, str(e))
      continue
    accepted.append((key, bad))
  assert not accepted, f"{tech}: accepted {accepted}"
