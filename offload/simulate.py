"""Simulation of offloading policies on test streams (jitted scan over time, vmapped over streams).

A policy maps the inputs of a block of B time steps to a send table [B, S]
(send wanted in token state n); the bucket then runs a `lax.scan` over the
block. Threshold policies (MDP, baseline) need only the current metric; the DQN
evaluates its network on the whole block at once (its Q values do not depend on
the token state), so the sequential part of the simulation is only the bucket.
Streams are vmapped. Reported per policy: average reward, average loss
(weak loss - reward), offload fraction and mean bucket occupancy (n / m at
decision time).
"""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from offload import bucket
from offload.dqn import features
from offload.models import DQNConfig, QNetwork, send_table


@dataclasses.dataclass(frozen=True)
class DQNPolicy:
  """A trained DQN: its parameters and network (thresholds are plain arrays)."""

  params: Any
  net: QNetwork


def _pad_thresholds(th: np.ndarray, size: int) -> jax.Array:
  out = np.full(size, np.inf, np.float32)
  out[: len(th)] = th
  return jnp.asarray(out)


@partial(jax.jit, static_argnames=("net", "block"))
def _simulate(policy_params, mseq, rseq, iseq, q, p, m, *, net: QNetwork | None, block: int):
  """Per-stream totals: (reward sum, sends, occupancy sum) for [num, T] streams (T % block == 0)."""
  num, length = mseq.shape
  nblocks = length // block
  cfg = net.config if net is not None else DQNConfig(nhist1=0, nhist2=-1)

  def one_stream(ms, rs, ivs):
    def block_body(n, b):
      t = b * block + jnp.arange(block)
      if net is None:
        table = ms[t][:, None] >= policy_params[None, :]
      else:
        x = features(ms[None], ivs[None], jnp.zeros_like(t), t, cfg)
        table = send_table(net.apply({"params": policy_params}, x)[0], p)

      def step(n, inp):
        want, r, iv = inp
        wanted = want[jnp.minimum(n, want.shape[0] - 1)]
        n_next, sent = bucket.step(n, wanted, iv, q, p, m)
        return n_next, (jnp.where(sent, r, 0.0), sent.astype(jnp.float32), n.astype(jnp.float32))

      n, (rew, sent, occ) = jax.lax.scan(step, n, (table, rs[t], ivs[t]))
      return n, jnp.stack([rew.sum(), sent.sum(), occ.sum()])

    _, sums = jax.lax.scan(block_body, jnp.asarray(m, jnp.int32), jnp.arange(nblocks))
    return sums.sum(0)

  return jax.vmap(one_stream)(mseq, rseq, iseq)


def simulate(
  policy, metrics, rewards, sequence, intervals, rate: float, depth: float, *, block: int = 1000
) -> dict:
  """Runs one policy on streams.

  Args:
    policy: a threshold vector (length m + 1, offload iff metric >= threshold[n]) or a DQNPolicy.
    metrics, rewards: per-image arrays of the split the sequence indexes (metric-sorted).
    sequence: [num, T] image indices; intervals: [num, T] inter-arrival slots (or None: periodic).
    rate, depth: the token bucket.
    block: time steps per block (the largest divisor of T not above it is used).

  Returns:
    {"reward", "offload_fraction", "occupancy"} averaged over all images.
  """
  q, p, m = bucket.discretize(rate, depth)
  seq = np.asarray(sequence)
  if seq.ndim == 1:
    seq = seq[None]
  num, length = seq.shape
  iv = np.ones_like(seq) if intervals is None else np.asarray(intervals).reshape(seq.shape)
  block = _divisor_at_most(length, block)
  ms = jnp.asarray(np.asarray(metrics, np.float32)[seq])
  rs = jnp.asarray(np.asarray(rewards, np.float32)[seq])
  ivs = jnp.asarray(iv, jnp.int32)
  if isinstance(policy, DQNPolicy):
    net, params = policy.net, policy.params
  else:
    th = np.asarray(policy, np.float64)
    if th.shape != (m + 1,):
      raise ValueError(
        f"threshold vector has shape {th.shape}; expected ({m + 1},) for (q, p, m) = {(q, p, m)}"
      )
    net, params = None, _pad_thresholds(th, m + 1)
  sums = np.asarray(_simulate(params, ms, rs, ivs, q, p, m, net=net, block=block), np.float64)
  reward, sent, occ = sums.sum(0)
  total = num * length
  return {"reward": reward / total, "offload_fraction": sent / total, "occupancy": occ / total / m}


def _divisor_at_most(n: int, k: int) -> int:
  """The largest divisor of n that is <= k (the block length)."""
  for d in range(min(n, k), 0, -1):
    if n % d == 0:
      return d
  return 1


def run(policy, metrics, rewards, sequence, intervals, rate: float, depth: float) -> float:
  """Average reward of `policy` on the streams (see `simulate`)."""
  return simulate(policy, metrics, rewards, sequence, intervals, rate, depth)["reward"]
