"""Simulation of offloading policies on test streams (jitted scan over time, vmapped over streams).

A policy maps the inputs of a block of B time steps to a send table [B, S]
(send wanted in token state n); the bucket then runs a `lax.scan` over the
block. Threshold policies (MDP, baseline) need only the current metric; the DQN
evaluates its network on the whole block at once (its Q values do not depend on
the token state), so the sequential part of the simulation is only the bucket.
Its fused path computes the first layer from the metric sequence itself, as a
1-D convolution of each stream's sequence with the first layer's weights in
reverse (no window of 96 values is gathered or written out), and evaluates the rest
of the network with its output layer folded to the send margin Q(n, send) -
Q(n, keep) (`models.send_margin`), on blocks of about 20,000 rows (streams x
steps) whose activations stay in cache; `fused=False`
runs the path it replaced (gathered features, the network's 2 S outputs).
Streams are vmapped. Reported per policy: average reward, average loss
(weak loss - reward), offload fraction and mean bucket occupancy (n / m at
decision time).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from common.xla_cpu import CPU_OPTIONS
from offload import bucket
from offload.dqn import features
from offload.models import QNetwork, send_margin, send_margin_params, send_table

ROWS_PER_BLOCK = 20_000  # DQN rows (streams x steps) per block by default (10,000 and 40,000 were slower)


@dataclasses.dataclass(frozen=True)
class DQNPolicy:
  """A trained DQN: its parameters and network (thresholds are plain arrays)."""

  params: Any
  net: QNetwork


def _bucket_scan(n0, want_fn, xs, q, p, m):
  """Scans the bucket over time (xs time-major: "r", "iv" [T, S] and what want_fn reads).

  The per-stream step is vmapped over streams. want_fn(n_S, x_t) -> send wanted [S].
  Returns the final n [S] and the per-stream sums [S, 4] of (reward, sends, occupancy, decisions):
  a decision is a step with n >= p, the only steps whose send wish matters.
  """

  def one(n, want, r, iv):
    n_next, sent = bucket.step(n, want, iv, q, p, m)
    inc = [
      jnp.where(sent, r, 0.0),
      sent.astype(jnp.float32),
      n.astype(jnp.float32),
      (n >= p).astype(jnp.float32),
    ]
    return n_next, jnp.stack(inc)

  def step(carry, x):
    n, acc = carry
    iv = x["iv"] if "iv" in x else jnp.ones_like(n)  # periodic arrivals
    n, inc = jax.vmap(one)(n, want_fn(n, x), x["r"], iv)
    return (n, acc + inc), None

  (n, acc), _ = jax.lax.scan(step, (n0, jnp.zeros((n0.shape[0], 4), jnp.float32)), xs)
  return n, acc


def _simulate(
  policy_params, metrics, rewards, seq, iseq, q, p, m, *, net: QNetwork | None, block: int, fused: bool = True
):
  """Per-stream totals [num, 4]: (reward sum, sends, occupancy sum, decisions) for [num, T] streams
  (T % block == 0)."""
  num, length = seq.shape
  n0 = jnp.full((num,), m, jnp.int32)
  if net is None:
    # threshold policy: offload iff metric >= threshold[n]; one scan over time
    xs = {"i": seq.T, "r": rewards[seq].T}
    if iseq is not None:
      xs["iv"] = iseq.T
    _, acc = _bucket_scan(n0, lambda n, x: metrics[x["i"]] >= policy_params[n], xs, q, p, m)
    return acc
  if not fused:
    return _dqn_unfused(policy_params, metrics, rewards, seq, iseq, q, p, m, net=net, block=block)
  return _dqn_fused(policy_params, metrics, rewards, seq, iseq, q, p, m, net=net, block=block)


@functools.cache
def _jitted(backend: str, launcher_options: bool):
  """`_simulate` jitted; on CPU with `launcher_options`, compiled with the launchers' XLA:CPU
  options (`common.xla_cpu.CPU_OPTIONS`, YNN fusion off: XLA's own kernels run the DQN's dots
  faster) whoever calls it, otherwise with XLA's defaults (or XLA_FLAGS)."""
  options = dict(CPU_OPTIONS) if backend == "cpu" and launcher_options else None
  return jax.jit(_simulate, static_argnames=("net", "block", "fused"), compiler_options=options)


def _dqn_blocks(table_fn, rewards, seq, iseq, q, p, m, block: int):
  """The DQN's simulation: per block of `block` steps the send table [num, block, S] of all streams
  at once (table_fn(t0): Q does not depend on n), then the bucket scan over the block."""
  num, length = seq.shape
  n0 = jnp.full((num,), m, jnp.int32)

  def block_body(carry, t0):
    n, acc = carry
    t = t0 + jnp.arange(block)
    xs = {"table": jnp.swapaxes(table_fn(t0), 0, 1), "r": rewards[seq[:, t]].T, "iv": iseq[:, t].T}

    def want_fn(n_, x_):
      return jnp.take_along_axis(x_["table"], n_[:, None], axis=1)[:, 0]

    n, acc_b = _bucket_scan(n, want_fn, xs, q, p, m)
    return (n, acc + acc_b), None

  init = (n0, jnp.zeros((num, 4), jnp.float32))
  (_, acc), _ = jax.lax.scan(block_body, init, jnp.arange(length // block) * block)
  return acc


def _dqn_unfused(policy_params, metrics, rewards, seq, iseq, q, p, m, *, net: QNetwork, block: int):
  """The network as trained (2 S outputs) on gathered features: the path `_dqn_fused` replaced."""
  num = seq.shape[0]
  mseq = metrics[seq]
  iseq = jnp.ones_like(seq) if iseq is None else iseq

  def table_fn(t0):
    t = jnp.broadcast_to(t0 + jnp.arange(block), (num, block))
    x = features(mseq, iseq, jnp.arange(num)[:, None], t, net.config)
    return send_table(net.apply({"params": policy_params}, x)[0], p)

  return _dqn_blocks(table_fn, rewards, seq, iseq, q, p, m, block)


def _first_layer(padded_NxT, t0, block: int, w_WxH: jax.Array) -> jax.Array:
  """[N, block, H]: out[:, t] = sum_j w[j] x[:, t0 + t - j] for the sequence x left-padded with
  W - 1 zeros (window t is padded[:, t0 + t : t0 + t + W] reversed): a 1-D convolution with the
  weights reversed, so that XLA's convolution reads each window in place, none written out."""
  width = w_WxH.shape[0]
  win = jax.lax.dynamic_slice_in_dim(padded_NxT, t0, block + width - 1, axis=1)
  kernel = w_WxH[::-1, None, :]  # [W, 1 input channel, H]
  return jax.lax.conv_general_dilated(
    win[..., None], kernel, (1,), "VALID", dimension_numbers=("NWC", "WIO", "NWC")
  )


def _dqn_fused(policy_params, metrics, rewards, seq, iseq, q, p, m, *, net: QNetwork, block: int):
  """The DQN's simulation with the first layer as a convolution over each stream's sequence (no
  gather, no window written out: `_first_layer`) and the output layer folded to the send margin
  Q(n, send) - Q(n, keep) (`models.send_margin`): S outputs, not 2 S."""
  num = seq.shape[0]
  cfg = net.config
  iseq = jnp.ones_like(seq) if iseq is None else iseq
  mpad = jnp.pad(metrics[seq], ((0, 0), (cfg.nhist1, 0)))
  # I_{t-1-j}: the intervals shifted by one step, zero before the first
  ipad = jnp.pad(iseq[:, :-1].astype(jnp.float32), ((0, 0), (max(cfg.nhist2, 0) + 1, 0)))
  hidden, out = send_margin_params(policy_params, cfg.nlayers)
  (w0, b0), w1 = hidden[0], cfg.nhist1 + 1
  inputs = [(mpad, w0[:w1])]
  if cfg.nhist2 >= 0:
    inputs.append((ipad, w0[w1:]))
  states = jnp.arange(net.num_states)

  def table_fn(t0):
    h = sum(_first_layer(x, t0, block, w) for x, w in inputs)
    h = jax.nn.leaky_relu(h.reshape(num * block, -1) + b0, 0.2)
    margin = send_margin((hidden[1:], out), h).reshape(num, block, -1)
    return jnp.logical_and(states >= p, margin >= 0)

  return _dqn_blocks(table_fn, rewards, seq, iseq, q, p, m, block)


def simulate(
  policy,
  metrics,
  rewards,
  sequence,
  intervals,
  rate: float,
  depth: float,
  *,
  block: int | None = None,
  fused: bool = True,
) -> dict:
  """Runs one policy on streams.

  Args:
    policy: a threshold vector (length m + 1, offload iff metric >= threshold[n]) or a DQNPolicy.
    metrics, rewards: per-image arrays of the split the sequence indexes (metric-sorted).
    sequence: [num, T] image indices; intervals: [num, T] inter-arrival slots (or None: periodic).
    rate, depth: the token bucket.
    block: time steps per block (the largest divisor of T not above it is used); None: about
      20,000 network rows per block (20,000 // num steps), whose activations stay in cache.
    fused: the DQN's fused path (sliding-window features, output layer folded to the send margin,
      the launchers' XLA:CPU options); False runs the path it replaced as it was (the network as
      trained on gathered features, XLA's default options; give `block=1000`, its default then),
      for tests and the benchmark.

  Returns:
    {"reward", "offload_fraction", "occupancy", "decision_fraction"} averaged over all images
    (decision_fraction: the steps with n >= p, where the policy's wish to send matters; a DQN's
    Q values are needed on those steps only).
  """
  q, p, m = bucket.discretize(rate, depth)
  seq = np.asarray(sequence)
  if seq.ndim == 1:
    seq = seq[None]
  num, length = seq.shape
  iv = None if intervals is None else jnp.asarray(np.asarray(intervals).reshape(seq.shape), jnp.int32)
  block = _divisor_at_most(length, max(1, ROWS_PER_BLOCK // num) if block is None else block)
  net, params, block = _policy_args(policy, q, p, m, block)
  run = _jitted(jax.default_backend(), fused)
  sums = np.asarray(
    run(params, jnp.asarray(metrics, jnp.float32), jnp.asarray(rewards, jnp.float32), jnp.asarray(seq, jnp.int32),
        iv, q, p, m, net=net, block=block, fused=fused),
    np.float64,
  )  # fmt: skip
  reward, sent, occ, decisions = sums.sum(0)
  total = num * length
  return {
    "reward": reward / total,
    "offload_fraction": sent / total,
    "occupancy": occ / total / m,
    "decision_fraction": decisions / total,
  }


def _policy_args(policy, q: int, p: int, m: int, block: int):
  """(network or None, its parameters or the threshold vector, block; 0 for a threshold policy)."""
  if isinstance(policy, DQNPolicy):
    return policy.net, policy.params, block
  th = np.asarray(policy, np.float64)
  if th.shape != (m + 1,):
    raise ValueError(
      f"threshold vector has shape {th.shape}; expected ({m + 1},) for (q, p, m) = {(q, p, m)}"
    )
  return None, jnp.asarray(th, jnp.float32), 0


def _divisor_at_most(n: int, k: int) -> int:
  """The largest divisor of n that is <= k (the block length)."""
  for d in range(min(n, k), 0, -1):
    if n % d == 0:
      return d
  return 1


def run(policy, metrics, rewards, sequence, intervals, rate: float, depth: float) -> float:
  """Average reward of `policy` on the streams (see `simulate`)."""
  return simulate(policy, metrics, rewards, sequence, intervals, rate, depth)["reward"]
