"""Fitted Q-iteration for the DQN (Qiu et al., EMSOFT 2022, Sec. IV; edgeml-dqn `train.py`).

The exogenous state (metrics and arrival times) does not depend on the actions
and the token dynamics given the interval are known, so training is Q-value
iteration on pre-generated sequences: each iteration samples tuples
(features_t, R_t, I_t, features_{t+1}) from the training pool, computes the
Bellman targets for every (token state, action) from the network's own
prediction on features_{t+1} (made once, before the updates), subtracts their
mean, and takes `ngdup` Adam steps of batch `gbsz` on the MSE.

`q_iteration` is one jitted, pure function of (state, key, q, p, m); it is
vmapped over rows = settings x seeds so one compiled program trains them all.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from common import sharding
from offload import bucket
from offload import losses as loss_lib
from offload.models import DQNConfig, QNetwork, split_q


class Pool(NamedTuple):
  """Training sequences as values: [num, length] each."""

  metrics: jax.Array  # float32
  rewards: jax.Array  # float32
  intervals: jax.Array  # int32


@flax.struct.dataclass
class DQNState:
  params: Any
  opt_state: Any
  it: jax.Array  # iterations done


@dataclasses.dataclass(frozen=True)
class FQIConfig:
  """Static settings of one Q-iteration (the original's flags).

  Attributes:
    gbsz: minibatch size; ngdup: gradient steps per iteration (tuples = gbsz * ngdup).
    discount: gamma.
  """

  gbsz: int = 128
  ngdup: int = 128
  discount: float = 0.9999


def make_optimizer(lr: float) -> optax.GradientTransformation:
  """Adam with Keras's defaults (eps 1e-7); the learning rate lives in the state (traced)."""
  return optax.inject_hyperparams(optax.adam)(learning_rate=lr, eps=1e-7)


def init_state(key: jax.Array, net: QNetwork, lr) -> DQNState:
  params = net.init(key, jnp.zeros((1, net.config.in_size)))["params"]
  return DQNState(params=params, opt_state=make_optimizer(lr).init(params), it=jnp.zeros((), jnp.int32))


def features(
  metrics: jax.Array, intervals: jax.Array, i: jax.Array, t: jax.Array, cfg: DQNConfig
) -> jax.Array:
  """Inputs at position t of stream i: [m_t .. m_{t-nhist1}, I_{t-1} .. I_{t-1-nhist2}], zero-padded."""
  j = jnp.arange(cfg.nhist1 + 1)
  idx = t[..., None] - j
  x = jnp.where(idx >= 0, metrics[i[..., None], jnp.maximum(idx, 0)], 0.0)
  if cfg.nhist2 >= 0:
    jdx = t[..., None] - 1 - jnp.arange(cfg.nhist2 + 1)
    iv = jnp.where(jdx >= 0, intervals[i[..., None], jnp.maximum(jdx, 0)], 0).astype(jnp.float32)
    x = jnp.concatenate([x, iv], axis=-1)
  return x


def output_mask(num_states: int, q, p, m) -> jax.Array:
  """Valid outputs: keep for n in [q, m], send for n in [p, m] ([2 S] bool)."""
  n = jnp.arange(num_states)
  keep = jnp.logical_and(n >= q, n <= m)
  send = jnp.logical_and(n >= p, n <= m)
  return jnp.concatenate([keep, send])


def targets(qn_BxF, r_B, i_B, q, p, m, gamma, tmat=None) -> jax.Array:
  """Bellman targets for every (state, action) before mean subtraction ([B, 2 S]).

  Q_tgt(n, a) = a R_t + gamma E[V'(n')], V'(n') = max_a' Q'(n', a') (send only if n' >= p),
  with n' = min(m, n - p a + q I_t) for the realised interval (tmat None), or the
  expectation over the interval distribution via the padded transition matrix tmat [S, S].
  """
  q0, q1 = split_q(qn_BxF)
  s = q0.shape[-1]
  n = jnp.arange(s)
  v = jnp.where(n >= p, jnp.maximum(q0, q1), q0)  # [B, S]
  if tmat is None:
    qi = q * i_B[:, None]
    nxt0 = jnp.clip(jnp.minimum(m, n + qi), 0, s - 1)
    nxt1 = jnp.clip(jnp.minimum(m, n - p + qi), 0, s - 1)
    ev0 = jnp.take_along_axis(v, nxt0, axis=-1)
    ev1 = jnp.take_along_axis(v, nxt1, axis=-1)
  else:
    ev_post = v @ tmat.T  # [B, S]: expected V' after post-decision count k
    ev0 = ev_post
    ev1 = ev_post[:, jnp.clip(n - p, 0, s - 1)]
  return jnp.concatenate([gamma * ev0, r_B[:, None] + gamma * ev1], axis=-1)


def q_iteration_fn(state: DQNState, key, q, p, m, pool: Pool, pmf, *, net: QNetwork, fqi: FQIConfig):
  """One Q-iteration for one row. Returns (state, metrics)."""
  cfg = net.config
  n_tuples = fqi.gbsz * fqi.ngdup
  k_i, k_t = jax.random.split(jax.random.fold_in(key, state.it))
  num, length = pool.metrics.shape
  i0 = jax.random.randint(k_i, (n_tuples,), 0, num)
  t = jax.random.randint(k_t, (n_tuples,), 0, length - 1)
  cur = features(pool.metrics, pool.intervals, i0, t, cfg)
  nxt = features(pool.metrics, pool.intervals, i0, t + 1, cfg)
  r = pool.rewards[i0, t]
  iv = pool.intervals[i0, t]
  qn = net.apply({"params": state.params}, nxt)[0]
  tmat = None if cfg.nhist2 >= 0 else bucket.padded_transition(q, m, pmf, net.num_states)
  tgt = targets(qn, r, iv, q, p, m, fqi.discount, tmat)
  mask = output_mask(net.num_states, q, p, m).astype(jnp.float32)
  tgt = tgt - (tgt * mask).sum() / (n_tuples * mask.sum())
  tx = make_optimizer(0.0)

  def loss_fn(params, x, y):
    return loss_lib.masked_q_error(net.apply({"params": params}, x)[0], y, mask)

  def gstep(carry, batch):
    params, opt_state = carry
    loss, grads = jax.value_and_grad(loss_fn)(params, *batch)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), loss

  batches = (cur.reshape(fqi.ngdup, fqi.gbsz, -1), tgt.reshape(fqi.ngdup, fqi.gbsz, -1))
  (params, opt_state), losses = jax.lax.scan(gstep, (state.params, state.opt_state), batches)
  new = DQNState(params=params, opt_state=opt_state, it=state.it + 1)
  return new, {"loss": losses.mean(), "target_span": (tgt * mask).max() - (tgt * mask).min()}


q_iteration = jax.jit(q_iteration_fn, static_argnames=("net", "fqi"), donate_argnums=0)


def make_batched_iteration(net: QNetwork, fqi: FQIConfig):
  """q_iteration vmapped over rows (settings x seeds): state, key, q, p, m batched; pool, pmf shared."""

  def one(state, key, q, p, m, pool, pmf):
    return q_iteration_fn(state, key, q, p, m, pool, pmf, net=net, fqi=fqi)

  vmapped = jax.vmap(one, in_axes=(0, 0, 0, 0, 0, None, None))
  # Data parallel over the rows: state, key, q, p, m and the new state sharded; pool, pmf, metrics replicated.
  return sharding.jit_step(
    vmapped, batch_argnums=(0, 1, 2, 3, 4), batch_outnums=(0,), local_batches=False, submesh=True
  )


def init_rows(keys: jax.Array, net: QNetwork, lrs: jax.Array) -> DQNState:
  """Initial states for a batch of rows (one key and learning rate per row)."""
  return jax.vmap(lambda k, lr: init_state(k, net, lr))(keys, lrs)


def set_learning_rate(state: DQNState, lr: float) -> DQNState:
  """Changes the learning rate of every row (e.g. `--lr 4` when resuming)."""
  hp = dict(state.opt_state.hyperparams)
  hp["learning_rate"] = jnp.full_like(hp["learning_rate"], lr)
  return state.replace(opt_state=state.opt_state._replace(hyperparams=hp))


def padded_pmf(pmf, size: int = 16) -> jax.Array:
  """The interval pmf as a float32 vector of length max(size, len(pmf)) (zeros appended)."""
  out = np.zeros(max(size, len(pmf)), np.float32)
  out[: len(pmf)] = pmf
  return jnp.asarray(out)
