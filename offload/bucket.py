"""The token bucket: integer representation, transition matrices and a pure step function.

A bucket with rate r tokens per arrival slot and depth b tokens is represented
in integer units of 1/p token: one arrival slot adds q units, one offload costs
p units, the capacity is m units (Chakrabarti et al., SEC 2021; Qiu et al.,
EMSOFT 2022). `discretize` reproduces the originals' `getqpm` exactly.

Per image t, with n units in the bucket (the bucket starts full, n = m):
offloading (a = 1) is allowed only when n >= p, then
`n <- min(m, n - p * a + q * I_t)` where I_t is the number of slots until the
next image (1 for periodic arrivals). So at decision time n lies in q..m.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from common.errors import ConfigError


class QPM(NamedTuple):
  """Integer bucket parameters: q units per slot, p units per offload, m units of capacity."""

  q: int
  p: int
  m: int


def discretize(rate: float, depth: float, maxp: int = 100) -> QPM:
  """Integerises (rate, depth) as the originals' `getqpm` does.

  For each denominator p in 1..maxp the error (frac(p r) + frac(p b)) / p is
  computed, the first minimiser is taken, q = floor(r p), m = floor(b p), and
  (q, p, m) is divided by its gcd.

  Args:
    rate: tokens added per arrival slot, > 0.
    depth: bucket depth in tokens, >= 1 (one offload costs one token).
    maxp: the largest denominator tried.

  Returns:
    QPM(q, p, m), e.g. (0.1, 4) -> (1, 10, 40) and (0.15, 2.5) -> (3, 20, 50).

  Raises:
    ConfigError: rate <= 0 or depth < 1.
  """
  if not (rate > 0 and math.isfinite(rate)):
    raise ConfigError(f"token rate = {rate!r}: must be in (0, inf)")
  if not (depth >= 1 and math.isfinite(depth)):
    raise ConfigError(f"bucket depth = {depth!r}: must be in [1, inf) tokens (an offload costs 1 token)")
  ps = np.arange(1, maxp + 1, dtype=np.float64)
  r_p, b_p = ps * rate, ps * depth
  err = ((r_p - np.floor(r_p)) + (b_p - np.floor(b_p))) / ps
  p = int(ps[int(np.argmin(err))])
  q, m = int(np.floor(rate * p)), int(np.floor(depth * p))
  g = math.gcd(math.gcd(q, p), m)
  return QPM(q // g, p // g, m // g)


def step(n: jax.Array, send: jax.Array, interval: jax.Array, q, p, m) -> tuple[jax.Array, jax.Array]:
  """One bucket update (pure, jittable, vmappable; q, p, m may be traced).

  Args:
    n: units in the bucket at decision time.
    send: the policy's wish to offload (bool); it is honoured only if n >= p.
    interval: slots until the next image (>= 1).
    q, p, m: the integer bucket parameters.

  Returns:
    (n_next, sent): the units at the next decision and whether the image was offloaded.
  """
  sent = jnp.logical_and(send, n >= p)
  n_next = jnp.minimum(m, n - p * sent.astype(n.dtype) + q * interval.astype(n.dtype))
  return n_next, sent


def interval_pmf(intervals: np.ndarray | None) -> np.ndarray:
  """The empirical distribution of inter-arrival times: pmf[i] = P(I = i), pmf[0] = 0.

  `None` means periodic arrivals (I = 1 always).
  """
  if intervals is None:
    return np.array([0.0, 1.0])
  iv = np.asarray(intervals).reshape(-1).astype(np.int64)
  if iv.size == 0 or iv.min() < 1:
    raise ConfigError("intervals must be a non-empty array of integers >= 1 (slots between images)")
  counts = np.bincount(iv)
  return counts / counts.sum()


def transition_matrix(qpm: QPM, pmf: np.ndarray) -> np.ndarray:
  """The token transition matrix T of the originals' layout.

  Row k = post-decision units 0..m; column j = next decision state n' = q + j,
  n' in q..m. Entry = P(n' | k) = sum_i P(I = i) 1{n' = min(m, k + q i)}.

  Returns:
    float64 [m + 1, m - q + 1], rows summing to 1.
  """
  q, _, m = qpm
  t = np.zeros((m + 1, m - q + 1))
  ks = np.arange(m + 1)
  for i in np.nonzero(pmf)[0]:
    cols = np.minimum(m, ks + q * int(i)) - q
    np.add.at(t, (ks, cols), pmf[i])
  return t


def padded_transition(q, m, pmf: jax.Array, size: int) -> jax.Array:
  """`transition_matrix` in a fixed [size, size] layout for traced (q, m) (vmap over settings).

  Row k = post-decision units, column = next decision state n' itself (0..size-1);
  rows k > m are unused.
  """
  ks = jnp.arange(size)[:, None]
  i = jnp.arange(pmf.shape[0])[None, :]
  nxt = jnp.minimum(m, ks + q * i)  # [size, I]
  onehot = nxt[..., None] == jnp.arange(size)[None, None, :]  # [size, I, size]
  return jnp.einsum("ki,kin->kn", jnp.broadcast_to(pmf[None, :], nxt.shape), onehot.astype(pmf.dtype))


def mean_interval(pmf: np.ndarray) -> float:
  """tau, the mean inter-arrival time of a pmf."""
  return float(np.sum(np.arange(len(pmf)) * pmf))
