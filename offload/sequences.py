"""Image orders and arrival processes, generated with `jax.random` (pure, seeded, vmappable).

Image orders (`stype`, edgeml-dqn `lib/genseq.py`), as indices into the
metric-sorted images of a split:
  0 `iid`: uniform i.i.d. indices.
  1 `locreset`: location reset. A location L ~ U[0, N) is redrawn with
    probability `rprob` at each step; the index is (L + d) mod N with
    d ~ U{0..floor(spread N)}. Because images are sorted by metric, a stream
    draws from a metric band of width spread*N that jumps every ~1/rprob images.
Arrival processes (`itype`), as inter-arrival times I_t in slots (I_t = slots
from image t to image t+1):
  0 `periodic`: I = 1.
  1 `doubleperiodic`: two-state Markov-modulated periodic arrivals. State k
    lasts Geometric(tprob_k) slots and images arrive every `int_k` slots within
    it; at a state change the next image arrives when the new state starts.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp


def seq_iid(key: jax.Array, n: int, length: int) -> jax.Array:
  """One i.i.d. stream of `length` indices into n images (int32)."""
  return jax.random.randint(key, (length,), 0, n, dtype=jnp.int32)


def seq_locreset(
  key: jax.Array, n: int, length: int, spread: jax.typing.ArrayLike, rprob: jax.typing.ArrayLike
):
  """One location-reset stream (spread, rprob may be traced)."""
  k_reset, k_loc, k_off = jax.random.split(key, 3)
  t = jnp.arange(length)
  reset = jnp.logical_or(t == 0, jax.random.uniform(k_reset, (length,)) < rprob)
  last = jax.lax.cummax(jnp.where(reset, t, 0))
  loc = jax.random.randint(k_loc, (length,), 0, n, dtype=jnp.int32)[last]
  width = jnp.floor(spread * n).astype(jnp.int32)
  off = jnp.floor(jax.random.uniform(k_off, (length,)) * (width + 1)).astype(jnp.int32)
  return (loc + off) % n


def _geometric(key, p):
  """Geometric on {1, 2, ...} with success probability p."""
  u = jax.random.uniform(key, minval=jnp.finfo(jnp.float32).tiny, maxval=1.0)
  return jnp.maximum(1, jnp.ceil(jnp.log(u) / jnp.log1p(-p))).astype(jnp.int32)


def int_doubleperiodic(
  key: jax.Array, length: int, int1: int = 1, int2: int = 3, tprob1: float = 0.001, tprob2: float = 0.0005
) -> jax.Array:
  """One stream of Markov-modulated periodic inter-arrival times (int32, >= 1)."""
  k0, k1, kscan = jax.random.split(key, 3)
  tp = jnp.asarray([tprob1, tprob2], jnp.float32)
  ints = jnp.asarray([int1, int2], jnp.int32)
  s0 = (jax.random.uniform(k0) >= tprob2 / (tprob1 + tprob2)).astype(jnp.int32)  # P(state 0) = pi1
  d0 = _geometric(k1, tp[s0])  # slots left in the current state, counted from the current arrival

  def body(carry, k):
    s, d = carry
    stay = ints[s] < d
    s_new = jnp.where(stay, s, 1 - s)
    d_new = jnp.where(stay, d - ints[s], _geometric(k, tp[1 - s]))
    interval = jnp.where(stay, ints[s], d)
    return (s_new, d_new), interval

  _, iv = jax.lax.scan(body, (s0, d0), jax.random.split(kscan, length + 1))
  return iv[1:]  # the first interval is dropped, as in the original


@partial(jax.jit, static_argnames=("n", "num", "length", "stype"))
def image_sequences(key, *, n: int, num: int, length: int, stype: int, spread=0.1, rprob=0.01) -> jax.Array:
  """[num, length] int32 indices into n metric-sorted images (vmapped over streams)."""
  keys = jax.random.split(key, num)
  if stype == 0:
    return jax.vmap(lambda k: seq_iid(k, n, length))(keys)
  return jax.vmap(lambda k: seq_locreset(k, n, length, spread, rprob))(keys)


@partial(jax.jit, static_argnames=("num", "length", "itype", "int1", "int2"))
def interval_sequences(
  key, *, num: int, length: int, itype: int, int1: int = 1, int2: int = 3, tprob1=0.001, tprob2=0.0005
) -> jax.Array:
  """[num, length] int32 inter-arrival times (vmapped over streams)."""
  keys = jax.random.split(key, num)
  if itype == 0:
    return jnp.ones((num, length), jnp.int32)
  return jax.vmap(lambda k: int_doubleperiodic(k, length, int1, int2, tprob1, tprob2))(keys)
