"""Offloading metrics from a weak/strong classifier pair (Chakrabarti et al., SEC 2021, Sec. 3).

Pipeline per fold (test = one fold, train = the others) and per cost type:
temperature calibration of the weak logits (`calibrate`), softmax entropy
(`entropy`), per-image costs of both classifiers (`costs`), the reward
R = weak cost - strong cost, and the metric m(x) = E[R | entropy(x)] fitted by
Nadaraya-Watson regression on a 1000-bin lookup table (`fit_metric`).
`kfold_metrics` runs the whole protocol and returns one dict per fold in the
originals' npz schema (`metric_tr/ts`, `wcost_tr/ts`, `scost_tr/ts`, `entr_tr`,
`mtog`, `tinv`).
"""

from __future__ import annotations

import numpy as np

COST_TYPES = {0: "top-1", 1: "top-5", 2: "rank (capped at 10)"}
COSTS = {"top1": 0, "top5": 1, "rank": 2}  # config.metrics.cost -> cost type (the original's ctype)


def _log_softmax_stats(logits: np.ndarray, tinv: float) -> tuple[np.ndarray, np.ndarray]:
  z = tinv * (logits - logits.max(axis=-1, keepdims=True))
  lse = np.log(np.exp(z).sum(axis=-1))
  return z, lse


def calibrate(logits: np.ndarray, labels: np.ndarray, *, rounds: int = 6, points: int = 10) -> float:
  """Temperature scaling: the inverse temperature in [0, 2] minimising mean cross-entropy.

  Grid search as in the original: `rounds` rounds of a `points`-point linspace,
  each zooming to +-1 grid step around the best point.
  """
  logits = np.asarray(logits, np.float64)
  labels = np.asarray(labels)
  lo, hi = 0.0, 2.0
  best = 1.0
  for _ in range(rounds):
    grid = np.linspace(lo, hi, points)
    ce = []
    for t in grid:
      z, lse = _log_softmax_stats(logits, t)
      ce.append(np.mean(lse - z[np.arange(len(labels)), labels]))
    i = int(np.argmin(ce))
    best = float(grid[i])
    step = grid[1] - grid[0]
    lo, hi = max(0.0, best - step), min(2.0, best + step)
  return best


def entropy(logits: np.ndarray, tinv: float) -> np.ndarray:
  """Softmax entropy of tinv * (l - max l): -sum e^z z / sum e^z + log sum e^z."""
  z, lse = _log_softmax_stats(np.asarray(logits, np.float64), tinv)
  e = np.exp(z)
  return -(e * z).sum(-1) / e.sum(-1) + lse


def ranks(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
  """1-based rank of the true class (1 = top-1 hit); ties count in the class's favour."""
  logits = np.asarray(logits)
  true = logits[np.arange(len(labels)), labels]
  return 1 + (logits > true[:, None]).sum(-1)


def costs(wrank: np.ndarray, srank: np.ndarray, ctype: int) -> tuple[np.ndarray, np.ndarray]:
  """(weak cost, strong cost): ctype 0 top-1 error, 1 top-5 error, 2 min(10, rank)."""
  if ctype == 0:
    f = lambda r: (r > 1).astype(np.float64)
  elif ctype == 1:
    f = lambda r: (r > 5).astype(np.float64)
  elif ctype == 2:
    f = lambda r: np.minimum(10, r).astype(np.float64)
  else:
    raise ValueError(f"cost type {ctype} must be one of {sorted(COST_TYPES)}")
  return f(np.asarray(wrank)), f(np.asarray(srank))


def kernel_regression(x: np.ndarray, y: np.ndarray, xq: np.ndarray, bandwidth: float) -> np.ndarray:
  """Nadaraya-Watson estimate of E[y | x] at xq with a Gaussian kernel (chunked over x)."""
  num = np.zeros(len(xq))
  den = np.zeros(len(xq))
  for s in range(0, len(x), 8192):
    d = (xq[:, None] - x[None, s : s + 8192]) / bandwidth
    w = np.exp(-0.5 * d * d)
    num += w @ y[s : s + 8192]
    den += w.sum(-1)
  return num / np.maximum(den, 1e-300)


def fit_metric(
  entr: np.ndarray, rew: np.ndarray, *, nbins: int = 1000
) -> tuple[np.ndarray, np.ndarray, float]:
  """Fits m(h) = E[R | h] on a `nbins` lookup table.

  The bandwidth is chosen from 2^{-8, -7.5, ..., -4} x (max h - min h) by a
  2-fold check (fit on even-indexed samples, squared error on odd-indexed ones);
  the final table uses all samples.

  Returns:
    (xbins, ybins, bandwidth); metrics are `np.interp(h, xbins, ybins)`.
  """
  entr = np.asarray(entr, np.float64)
  rew = np.asarray(rew, np.float64)
  lo, hi = float(entr.min()), float(entr.max())
  span = max(hi - lo, 1e-12)
  xbins = np.linspace(lo, hi, nbins)
  best, best_err = None, np.inf
  for e in np.arange(-8.0, -3.99, 0.5):
    bw = 2.0**e * span
    yb = kernel_regression(entr[0::2], rew[0::2], xbins, bw)
    err = np.mean((np.interp(entr[1::2], xbins, yb) - rew[1::2]) ** 2)
    if err < best_err:
      best, best_err = bw, err
  ybins = kernel_regression(entr, rew, xbins, best)
  return xbins, ybins, float(best)


def kfold_metrics(
  wlogits: np.ndarray, labels: np.ndarray, wrank: np.ndarray, srank: np.ndarray, split: np.ndarray, ctype: int
) -> list[dict[str, np.ndarray]]:
  """The k-fold protocol: for each fold f, calibrate/fit on the other folds, evaluate on f.

  Args:
    wlogits: weak-classifier logits [N, C].
    labels: true labels [N].
    wrank, srank: 1-based ranks of the true class for the weak and strong classifiers [N].
    split: fold id per image [N] (0..K-1).
    ctype: cost type (0 top-1, 1 top-5, 2 rank capped at 10).

  Returns:
    one dict per fold in the originals' `fm_fold{f}_cost{c}.npz` schema.
  """
  out = []
  wcost, scost = costs(wrank, srank, ctype)
  for f in np.unique(split):
    tr, ts = split != f, split == f
    tinv = calibrate(wlogits[tr], labels[tr])
    e_tr, e_ts = entropy(wlogits[tr], tinv), entropy(wlogits[ts], tinv)
    xb, yb, bw = fit_metric(e_tr, wcost[tr] - scost[tr])
    out.append(
      {
        "tinv": np.float64(tinv),
        "bandwidth": np.float64(bw),
        "wcost_tr": wcost[tr],
        "scost_tr": scost[tr],
        "wcost_ts": wcost[ts],
        "scost_ts": scost[ts],
        "entr_tr": e_tr,
        "entr_ts": e_ts,
        "mtog": np.stack([xb, yb]),
        "metric_tr": np.interp(e_tr, xb, yb),
        "metric_ts": np.interp(e_ts, xb, yb),
      }
    )
  return out
