"""Threshold policies: the MDP (value iteration over the token state), the baseline and the lower bound.

MDP (Chakrabarti et al., SEC 2021; generalised to any i.i.d. arrival process in
edgeml-dqn `iidpolicy`). With metrics sorted descending, offloading the top k
images in state n earns G_k = S_k / N (S_k the sum of their rewards) and uses
the send probability F_k = k / N. Value iteration over n = q..m:

  V(n) = gamma T[n] V                                                      n < p
  V(n) = max_k  G_k + gamma (F_k T[n - p] V + (1 - F_k) T[n] V)            n >= p

The maximiser of S_k - c k with c = gamma (T[n] V - T[n - p] V) lies on the
upper concave hull of the points (k, S_k), so each state costs a binary search
over the hull's slopes instead of a scan over all N images (the original scans
all N in every state of every sweep). Candidate k are the ends of groups of
equal metrics, so `offload iff metric >= threshold` sends exactly k images;
k = 0 (never send, threshold +inf) is allowed too.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from offload import bucket


def _candidates(metrics: np.ndarray, rewards: np.ndarray):
  """Metrics sorted descending, and the candidate (k, S_k) with k at ends of equal-metric groups."""
  order = np.argsort(-np.asarray(metrics, np.float64), kind="stable")
  m_desc = np.asarray(metrics, np.float64)[order]
  s = np.concatenate([[0.0], np.cumsum(np.asarray(rewards, np.float64)[order])])
  ks = np.concatenate([[0], np.nonzero(np.diff(m_desc) != 0)[0] + 1, [len(m_desc)]])
  return m_desc, ks, s[ks]


def _upper_hull(x: np.ndarray, y: np.ndarray) -> np.ndarray:
  """Indices of the upper concave hull of points with increasing x (monotone chain).

  Points that lie on or below the segment joining their neighbours cannot be hull
  vertices; they are dropped in vectorised passes first, so the sequential chain
  runs on few points.
  """
  keep = np.arange(len(x))
  while len(keep) > 2:
    xa, ya = x[keep], y[keep]
    cross = (ya[1:-1] - ya[:-2]) * (xa[2:] - xa[:-2]) - (ya[2:] - ya[:-2]) * (xa[1:-1] - xa[:-2])
    ok = np.concatenate([[True], cross > 0, [True]])
    if ok.all():
      break
    keep = keep[ok]
  hull: list[int] = []
  for i in keep:
    while len(hull) >= 2:
      a, b = hull[-2], hull[-1]
      # drop b if it is on or below the segment a -> i
      if (y[b] - y[a]) * (x[i] - x[a]) <= (y[i] - y[a]) * (x[b] - x[a]):
        hull.pop()
      else:
        break
    hull.append(int(i))
  return np.asarray(hull)


def _threshold_of_k(m_desc: np.ndarray, k: np.ndarray) -> np.ndarray:
  return np.where(k > 0, m_desc[np.maximum(k - 1, 0)], np.inf)


def thresholds(
  metrics: np.ndarray,
  rewards: np.ndarray,
  rate: float,
  depth: float,
  *,
  gamma: float = 0.9999,
  intervals: np.ndarray | None = None,
  max_sweeps: int = 10_000,
  tol: float = 1e-6,
  return_info: bool = False,
):
  """MDP thresholds per bucket state.

  Args:
    metrics: training metrics [N] (any units; thresholds come back in the same units).
    rewards: training rewards [N] (weak cost - strong cost).
    rate, depth: token bucket (tokens per slot, tokens).
    gamma: discount.
    intervals: observed inter-arrival times (the arrival distribution is their
      empirical pmf); None means periodic arrivals.
    max_sweeps, tol: value iteration stops when no threshold moves by more than
      tol * (max - min metric) for m // q + 1 sweeps in a row, or after
      max_sweeps sweeps. (The original stops after one unchanged sweep, which
      can stop while values are still travelling across the bucket.)
    return_info: also return {"sweeps", "qpm", "values"}.

  Returns:
    float64 [m + 1]: entry n is the threshold in state n (offload iff metric >= it);
    +inf where n < p, in unreachable states n < q, and where never sending is optimal.
  """
  qpm = bucket.discretize(rate, depth)
  q, p, m = qpm
  tmat = bucket.transition_matrix(qpm, bucket.interval_pmf(intervals))
  m_desc, hk, hull_args = _padded_hull(metrics, rewards)
  states = np.arange(q, m + 1)
  send_states = states[states >= p]
  tolerance = tol * max(float(m_desc[0] - m_desc[-1]), 1e-300)
  j, v, sweeps = _value_iteration(
    jnp.asarray(tmat[states], jnp.float32),
    jnp.asarray(tmat[send_states - p], jnp.float32),
    *hull_args,
    jnp.float32(gamma),
    jnp.float32(tolerance),
    jnp.int32(m // max(q, 1) + 1),
    jnp.int32(max_sweeps),
  )
  out = np.full(m + 1, np.inf)
  out[send_states] = _threshold_of_k(m_desc, hk[np.asarray(j)])
  if return_info:
    return out, {"sweeps": int(sweeps), "qpm": qpm, "values": np.asarray(v, np.float64)}
  return out


def _padded_hull(metrics: np.ndarray, rewards: np.ndarray):
  """(metrics sorted descending, the upper hull's k, the value iteration's hull arguments: k / N,
  reward sum / N, the decreasing slopes and the thresholds, padded by `_bucket_size`)."""
  m_desc, ks, sk = _candidates(metrics, rewards)
  hull = _upper_hull(ks.astype(np.float64), sk)
  hk, hs = ks[hull], sk[hull]
  pad = _bucket_size(len(hk)) - len(hk)
  slopes = np.concatenate([np.diff(hs) / np.diff(hk), np.full(pad + 1, -np.inf)])  # decreasing, [h]
  th_hull = np.concatenate([_threshold_of_k(m_desc, hk), np.full(pad, np.inf)])
  args = (
    jnp.asarray(np.concatenate([hk, np.zeros(pad, np.int64)]), jnp.float32) / len(m_desc),
    jnp.asarray(np.concatenate([hs, np.zeros(pad)]), jnp.float32) / len(m_desc),
    jnp.asarray(slopes, jnp.float32),
    jnp.asarray(th_hull, jnp.float32),
  )
  return m_desc, hk, args


def _bucket_size(n: int) -> int:
  """Pads the hull to a power of two so repeated solves reuse one compiled program."""
  return max(16, 1 << (int(n) - 1).bit_length())


@jax.jit
def _value_iteration(t_keep, t_send, hk, hs, slopes, th_hull, gamma, tol, patience, max_sweeps):
  """Relative value iteration (v - max v each sweep, which leaves every decision unchanged).

  hk, hs: hull points (k / N, S_k / N), so max_k G_k - c F_k = hs[j] - c hk[j] with j the
  number of hull edges steeper than c.
  """
  n_send = t_send.shape[0]

  def decide(v):
    ev_keep = t_keep @ v
    c = gamma * (ev_keep[-n_send:] - t_send @ v)
    j = jnp.searchsorted(-slopes, -c, side="left")
    v_new = gamma * ev_keep
    v_new = v_new.at[-n_send:].add(hs[j] - c * hk[j])
    return v_new - v_new.max(), j

  v0 = jnp.zeros(t_keep.shape[1], t_keep.dtype)
  v, j, _, sweeps = _sweep_until_stable(
    decide, th_hull, v0, jnp.zeros(n_send, jnp.int32), patience, max_sweeps, tol
  )
  return j, v, sweeps


def _sweep_until_stable(decide, th_hull, v0, j0, patience, max_sweeps, tol):
  """Sweeps `decide` until the thresholds (th_hull[j]) moved less than `tol` for `patience` sweeps
  in a row, or `max_sweeps`: (v, j, stable sweeps, sweeps)."""

  def cond(carry):
    _, _, stable, sweeps = carry
    return jnp.logical_and(stable < patience, sweeps < max_sweeps)

  def body(carry):
    v, j_prev, stable, sweeps = carry
    v, j = decide(v)
    th, th_prev = th_hull[j], th_hull[j_prev]
    moved = jnp.where(
      j == j_prev, 0.0, jnp.where(jnp.isinf(th) | jnp.isinf(th_prev), jnp.inf, jnp.abs(th - th_prev))
    )
    stable = jnp.where(jnp.logical_and(sweeps > 0, moved.max() < tol), stable + 1, 0)
    return v, j, stable, sweeps + 1

  return jax.lax.while_loop(cond, body, (v0, j0, jnp.int32(0), jnp.int32(0)))


def baseline_threshold(metrics: np.ndarray, rate: float, tau: float = 1.0) -> float:
  """One threshold for every state: the (1 - r tau) quantile of the training metrics.

  As edgeml-dqn `simulate.py`: sorted_m[int(N (1 - r tau)) - 1] (everything when r tau >= 1).
  """
  m_sorted = np.sort(np.asarray(metrics, np.float64))
  idx = int(len(m_sorted) * (1.0 - rate * tau)) - 1
  if idx < 0:
    return -np.inf
  return float(m_sorted[min(idx, len(m_sorted) - 1)])


def baseline_thresholds(metrics: np.ndarray, rate: float, depth: float, tau: float = 1.0) -> np.ndarray:
  """The baseline as a per-state threshold vector [m + 1] (+inf where n < p)."""
  q, p, m = bucket.discretize(rate, depth)
  out = np.full(m + 1, baseline_threshold(metrics, rate, tau))
  out[:p] = np.inf
  return out


def lower_bound_reward(metrics_seen: np.ndarray, rewards_seen: np.ndarray, threshold: float) -> float:
  """Average reward with the baseline threshold and no bucket: mean(R * 1{m > threshold})."""
  return float(np.mean(np.asarray(rewards_seen) * (np.asarray(metrics_seen) > threshold)))


def brute_force_thresholds(
  metrics: np.ndarray,
  rewards: np.ndarray,
  rate: float,
  depth: float,
  *,
  gamma: float = 0.9999,
  intervals: np.ndarray | None = None,
  sweeps: int = 2000,
) -> np.ndarray:
  """Reference value iteration scanning every candidate k in every state (for tests; slow)."""
  qpm = bucket.discretize(rate, depth)
  q, p, m = qpm
  tmat = bucket.transition_matrix(qpm, bucket.interval_pmf(intervals))
  m_desc, ks, sk = _candidates(metrics, rewards)
  n_all = len(m_desc)
  v = np.zeros(m - q + 1)
  kbest = np.zeros(m + 1, np.int64)
  for _ in range(sweeps):
    v_new = np.empty_like(v)
    for n in range(q, m + 1):
      keep = tmat[n] @ v
      if n < p:
        v_new[n - q] = gamma * keep
        continue
      send = tmat[n - p] @ v
      scores = sk / n_all + gamma * (ks / n_all * send + (1 - ks / n_all) * keep)
      i = int(np.argmax(scores))
      v_new[n - q], kbest[n] = scores[i], ks[i]
    v = v_new
  out = np.full(m + 1, np.inf)
  out[max(p, q) :] = _threshold_of_k(m_desc, kbest[max(p, q) :])
  return out


def grid_size(rates, depths) -> int:
  """The padded state count of a grid of settings: 1 + the largest m (thresholds are indexed by n)."""
  return 1 + max(bucket.discretize(float(r), float(b)).m for r, b in zip(rates, depths, strict=True))


def thresholds_grid(
  metrics: np.ndarray, rewards: np.ndarray, rates, depths, *, size: int | None = None, gamma: float = 0.9999,
  tol: float = 1e-6, max_sweeps: int = 10_000,
) -> np.ndarray:  # fmt: skip
  """MDP thresholds of many (rate, depth) settings at once, periodic arrivals (one vmapped program).

  The same value iteration and stopping rule as `thresholds` (which it equals point by point), in a
  padded layout: state n is entry n of a [size] vector for every setting, the bucket's (q, p, m) are
  traced, and the periodic transitions n -> min(m, n + q) are gathers instead of matrix rows.

  Returns:
    float64 [G, size]: row g is setting g's threshold per state n (offload iff metric >= it),
    +inf where n < p, n > m, in unreachable states n < q and where never sending is optimal.
  """
  qpms = np.asarray([bucket.discretize(float(r), float(b)) for r, b in zip(rates, depths, strict=True)])
  size = size or int(qpms[:, 2].max()) + 1
  if qpms[:, 2].max() + 1 > size:
    raise ValueError(f"size = {size}: the grid needs {int(qpms[:, 2].max()) + 1} states")
  m_desc, ks, sk = _candidates(metrics, rewards)
  hull = _upper_hull(ks.astype(np.float64), sk)
  hk, hs = ks[hull], sk[hull]
  h = _bucket_size(len(hk))
  pad = h - len(hk)
  slopes = np.concatenate([np.diff(hs) / np.diff(hk), np.full(pad + 1, -np.inf)])
  th_hull = np.concatenate([_threshold_of_k(m_desc, hk), np.full(pad, np.inf)])
  tolerance = tol * max(float(m_desc[0] - m_desc[-1]), 1e-300)
  q, p, m = (jnp.asarray(qpms[:, i], jnp.int32) for i in range(3))
  j = _grid_iteration(
    q, p, m,
    jnp.asarray(np.concatenate([hk, np.zeros(pad, np.int64)]), jnp.float32) / len(m_desc),
    jnp.asarray(np.concatenate([hs, np.zeros(pad)]), jnp.float32) / len(m_desc),
    jnp.asarray(slopes, jnp.float32), jnp.asarray(th_hull, jnp.float32), jnp.float32(gamma),
    jnp.float32(tolerance), jnp.int32(max_sweeps), size=size,
  )  # fmt: skip
  j = np.asarray(j)
  n = np.arange(size)[None, :]
  live = (n >= qpms[:, 1:2]) & (n >= qpms[:, 0:1]) & (n <= qpms[:, 2:3])
  return np.where(live, _threshold_of_k(m_desc, hk[np.minimum(j, len(hk) - 1)]), np.inf)


@partial(jax.jit, static_argnames=("size",))
def _grid_iteration(q, p, m, hk, hs, slopes, th_hull, gamma, tol, max_sweeps, *, size: int):
  """`_value_iteration` for periodic arrivals, vmapped over settings (q, p, m) in a [size] layout."""
  n = jnp.arange(size)

  def one(q, p, m):
    valid = (n >= q) & (n <= m)
    send_ok = valid & (n >= p)
    keep_idx = jnp.minimum(m, n + q)
    send_idx = jnp.clip(jnp.minimum(m, n - p + q), 0, size - 1)

    def decide(v):
      ev_keep, ev_send = v[keep_idx], v[send_idx]
      c = gamma * (ev_keep - ev_send)
      j = jnp.searchsorted(-slopes, -c, side="left")
      v_new = gamma * ev_keep + jnp.where(send_ok, hs[j] - c * hk[j], 0.0)
      v_new = jnp.where(valid, v_new, 0.0)
      return v_new - jnp.max(jnp.where(valid, v_new, -jnp.inf)), jnp.where(send_ok, j, 0)

    v0, j0 = jnp.zeros(size, jnp.float32), jnp.zeros(size, jnp.int32)
    return _sweep_until_stable(decide, th_hull, v0, j0, m // jnp.maximum(q, 1) + 1, max_sweeps, tol)[1]

  return jax.vmap(one)(q, p, m)
