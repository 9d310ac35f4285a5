"""Robustness to a shifted metric distribution (edgeml.mdp `runtest_robust.py`).

The MDP and the baseline (one threshold) are fitted on training metrics shifted by dropping a
share of the training images by metric rank (drop d > 0: the d % lowest metrics; d < 0: the
|d| % highest), then run under their token bucket on i.i.d. streams of the true test images.
Every (drop, rate, depth) is one setting of `offload.multicam.simulate` with one camera and an
open switch, so the whole study is one vmapped program per drop.
"""

from __future__ import annotations

import jax
import numpy as np

from common.errors import ConfigError
from offload import bucket, mdp, multicam


def shifted(metrics: np.ndarray, rewards: np.ndarray, drop: float) -> tuple[np.ndarray, np.ndarray]:
  """The training images left after dropping drop % by metric rank (as `runtest_robust`)."""
  idx = np.argsort(metrics, kind="stable")
  k = int(drop / 100 * len(idx))
  idx = idx[k:] if drop > 0 else idx[:k] if drop < 0 else idx
  return metrics[idx], rewards[idx]


def check(drops, rates, depths) -> None:
  """Validates the study (ConfigError names the key and the allowed range)."""
  for key, vals in (("drops", drops), ("rates", rates), ("depths", depths)):
    if not len(vals):
      raise ConfigError(f"config.robust.{key} is empty: give at least one value")
    for i, v in enumerate(vals):
      ok = (
        isinstance(v, int | float)
        and {
          "drops": -100 < v < 100 and v != 0,
          "rates": 0 < v < 1,
          "depths": 1 <= v <= 100,
        }[key]
      )
      if not ok:
        rng = {"drops": "(-100, 100), not 0 (percent of the training images)", "rates": "(0, 1)",
               "depths": "[1, 100] (b < p: one offload costs one token)"}[key]  # fmt: skip
        raise ConfigError(f"config.robust.{key}[{i}] = {v!r}: must be in {rng}")


def study(train, test, drops, rates, depths, key, *, test_shape, gamma, max_sweeps, chunk) -> dict:
  """Test loss of the MDP and the baseline fitted on each shifted training set, per (rate, depth).

  Returns "drops" (0 first: the unshifted fit), "mdp" and "baseline" [D, R, B], "weak", "strong".
  """
  pts = [(float(r), float(b)) for r in rates for b in depths]
  size = mdp.grid_size(*zip(*pts, strict=True))
  qpms = [bucket.discretize(r, b) for r, b in pts]
  idx = multicam.streams(key, len(test.metrics), *test_shape, 1)
  n = len(pts)
  sets = multicam.settings([1] * 2 * n, qpms * 2, [multicam.OPEN_SWITCH] * 2 * n)
  out = {"drops": [0.0, *map(float, drops)], "mdp": [], "baseline": []}
  for drop in out["drops"]:
    m_d, r_d = shifted(train.metrics, train.rewards, drop)
    th = mdp.thresholds_grid(
      m_d, r_d, [p[0] for p in pts], [p[1] for p in pts], size=size, gamma=gamma, max_sweeps=max_sweeps
    )
    base = np.full((n, size), np.inf)
    for i, (r, b) in enumerate(pts):
      row = mdp.baseline_thresholds(m_d, r, b)
      base[i, : len(row)] = row
    tot = multicam.run_chunked(np.concatenate([th, base]), sets, test.metrics, test.rewards, idx, chunk=chunk)
    gain = multicam.per_image(tot, 1, *test_shape)["gain"]
    out["mdp"].append(gain[:n].reshape(len(rates), len(depths)))
    out["baseline"].append(gain[n:].reshape(len(rates), len(depths)))
  iv = np.asarray(jax.device_get(idx))
  out["weak"], out["strong"] = float(test.wcost[iv].mean()), float(test.scost[iv].mean())
  out["mdp"] = out["weak"] - np.asarray(out["mdp"])
  out["baseline"] = out["weak"] - np.asarray(out["baseline"])
  return out
