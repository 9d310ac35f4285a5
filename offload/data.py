"""Metrics files in the originals' npz schema: validation, loading, a synthetic generator.

Schema (edgeml.mdp `fm_fold{f}_cost{c}.npz`, edgeml-dqn `ofa_top5.npz`): 1-D
float arrays `metric_tr`, `metric_ts`, `wcost_tr`, `wcost_ts`, `scost_tr`,
`scost_ts` (required; train and test lengths consistent across keys) and
optionally `entr_tr`, `entr_ts`, `mtog` ([2, bins]), `tinv`.

`prepare` does what the DQN code's `load_base` and its callers do: z-scores the
metrics with the training mean and std, forms rewards R = wcost - scost, and
sorts each split by metric (ascending), because location-reset sequences index
the metric-sorted images.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import numpy as np

from common.errors import DataError
from common.export import write_atomic

REQUIRED = ("metric_tr", "metric_ts", "wcost_tr", "wcost_ts", "scost_tr", "scost_ts")
OPTIONAL_PER_IMAGE = {"entr_tr": "tr", "entr_ts": "ts"}


class Split(NamedTuple):
  """One split, sorted by metric ascending. All arrays have length N."""

  metrics: np.ndarray  # float32, z-scored with the training statistics
  rewards: np.ndarray  # float32, wcost - scost
  wcost: np.ndarray
  scost: np.ndarray


class MetricsData(NamedTuple):
  train: Split
  test: Split
  mean: float  # z-score statistics of the raw training metrics
  std: float


def validate(arrays: dict[str, np.ndarray], source: str = "metrics file") -> dict[str, np.ndarray]:
  """Checks the schema; returns float64 1-D copies of the per-image arrays.

  Raises:
    DataError: a key is missing, an array is not 1-D / numeric / finite, lengths disagree,
      or a split is too small.
  """
  missing = [k for k in REQUIRED if k not in arrays]
  if missing:
    raise DataError(
      f"{source} lacks the key(s) {missing}; it needs {list(REQUIRED)} (the edgeml npz schema). "
      "Create one with `python -m offload.main metrics` or check the file"
    )
  out = {}
  for k in (*REQUIRED, *[k for k in OPTIONAL_PER_IMAGE if k in arrays]):
    a = np.asarray(arrays[k])
    if a.dtype.kind not in "fiub":
      raise DataError(f"{source}: `{k}` has dtype {a.dtype}; expected numbers")
    if a.ndim != 1:
      raise DataError(f"{source}: `{k}` has shape {a.shape}; expected a 1-D array (one value per image)")
    a = a.astype(np.float64)
    if not np.all(np.isfinite(a)):
      raise DataError(f"{source}: `{k}` holds {int((~np.isfinite(a)).sum())} NaN/inf values; fix the file")
    out[k] = a
  for split in ("tr", "ts"):
    keys = [k for k in out if k.endswith("_" + split)]
    lens = {k: len(out[k]) for k in keys}
    if len(set(lens.values())) != 1:
      raise DataError(f"{source}: the `_{split}` arrays differ in length: {lens}")
    if next(iter(lens.values())) < 2:
      raise DataError(f"{source}: the `_{split}` split has fewer than 2 images")
  if out["metric_tr"].std() == 0:
    raise DataError(f"{source}: `metric_tr` is constant; the metric cannot order the images")
  if "mtog" in arrays:
    mtog = np.asarray(arrays["mtog"])
    if mtog.ndim != 2 or mtog.shape[0] != 2:
      raise DataError(f"{source}: `mtog` has shape {mtog.shape}; expected [2, bins]")
  return out


def load_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads and validates a metrics npz file (raises DataError on anything malformed)."""
  from common import safeio

  path = Path(path)
  if not path.exists():
    raise DataError(f"metrics file {path} does not exist; pass a valid --config.metrics.file")
  arrays = safeio.load_npz(path, what="metrics file", hint="write one with `edgeinfer offload metrics`")
  return validate(arrays, source=str(path))


def save_npz(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> Path:
  """Writes a metrics file atomically (validating it first)."""
  import io

  validate(arrays, source=str(path))
  buf = io.BytesIO()
  np.savez(buf, **arrays)
  return write_atomic(path, buf.getvalue())


def prepare(arrays: dict[str, np.ndarray]) -> MetricsData:
  """z-scores metrics with the training statistics, forms rewards, sorts each split by metric."""
  arrays = validate(arrays)
  mu, sd = float(arrays["metric_tr"].mean()), float(arrays["metric_tr"].std())

  def split(tag: str) -> Split:
    m = (arrays[f"metric_{tag}"] - mu) / sd
    order = np.argsort(m, kind="stable")
    w, s = arrays[f"wcost_{tag}"][order], arrays[f"scost_{tag}"][order]
    return Split(m[order].astype(np.float32), (w - s).astype(np.float32), w, s)

  return MetricsData(split("tr"), split("ts"), mu, sd)


def synthetic(n: int = 50_000, *, seed: int = 0, train_fraction: float = 2 / 3) -> dict[str, np.ndarray]:
  """A metrics file with the published statistics of `ofa_top5.npz` (top-5 loss, ILSVRC val).

  Matched (digest Sec. 6.1): weak top-5 loss ~0.30; the metric E[R | entropy]
  rises smoothly from ~0 to ~0.67 over entropies 0..6; rewards in {-1, 0, 1};
  the lower bound without a bucket at r = 0.05 / 0.1 / 0.25 is ~.269 / .241 / .168.
  The metric is 0.67 * u^1.5 of a uniform u (the power fitted to those lower
  bounds), the strong classifier errs with probability 0.032 independently, and
  the weak one with probability metric + 0.032 (so E[R | metric] = metric).
  """
  rng = np.random.default_rng(seed)
  u = rng.uniform(size=n)
  metric = 0.67 * u**_SYN_POWER
  s = (rng.uniform(size=n) < _SYN_STRONG_ERR).astype(np.float64)
  w = (rng.uniform(size=n) < metric + _SYN_STRONG_ERR).astype(np.float64)
  entr = 6.0 * u  # monotone in the metric, as in Fig 3 of the DQN paper
  ntr = int(n * train_fraction)
  return {
    "metric_tr": metric[:ntr],
    "metric_ts": metric[ntr:],
    "wcost_tr": w[:ntr],
    "wcost_ts": w[ntr:],
    "scost_tr": s[:ntr],
    "scost_ts": s[ntr:],
    "entr_tr": entr[:ntr],
    "entr_ts": entr[ntr:],
  }


_SYN_POWER = 1.5
_SYN_STRONG_ERR = 0.032
