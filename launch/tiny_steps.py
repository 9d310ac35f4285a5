"""Every technique's training step on a tiny model, ready to run: `BUILDERS[name](batch)` returns
(step, args, rows_sharded), the step built with `common.sharding.jit_step` as the trainer builds it.

Shared by `python -m launch.bench scaling` and the 8-device equality tests (tests/common).
`batch` is the global batch (offload: its settings x seeds rows).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax

from common import train as train_lib

rng = np.random.default_rng(0)


def batch_of(n: int, hw: int, classes: int) -> dict:
  return {
    "image": rng.uniform(size=(n, hw, hw, 3)).astype(np.float32),
    "label": rng.integers(0, classes, n).astype(np.int32),
    "mask": np.ones(n, np.float32),
  }


def copy(tree):
  return jax.tree.map(lambda a: jnp.array(a, copy=True) if isinstance(a, jax.Array) else a, tree)


def common_step(batch: int = 16):
  from common import classifier, models

  model = models.SmallCNN(widths=(4, 8), num_classes=3)
  tx = optax.adam(1e-2)
  state = classifier.init_state(model, tx, jax.random.key(0), (8, 8, 3))
  step, _ = classifier.make_steps(model, tx, mean=0.5, std=0.25)
  return step, (state, batch_of(batch, 8, 3), jax.random.key(1)), False


def agile_step(batch: int = 16):
  from agile import data as agile_data
  from agile import reference
  from agile import train as agile_train
  from agile.models import AgileNN, init_variables
  from common import app

  tiny = app.load_config_file("agile/configs/quick.py:tiny")  # the model of tests/agile/test_agile_train.py
  cfg, rcfg = agile_train.model_config(tiny, 3), agile_train.reference_config(tiny, 3)
  prep = agile_data.Preprocess((0.5,) * 3, (0.5,) * 3, flip=True, pad=1, input_size=6)
  model = AgileNN(cfg)
  v = init_variables(model, jax.random.key(0), (6, 6, 3))
  ref_vars = reference.ReferenceNet(rcfg).init(jax.random.key(1), jnp.zeros((1, 6, 6, 3)), train=False)
  eval_vars = reference.body_variables(ref_vars)
  _, eval_loss = reference.make_evaluator(rcfg)
  tx = agile_train.sgdw(0.1, 10)
  step = agile_train.make_train_step(model, eval_loss, tx, prep, ig_steps=2)
  hp = {"lam": jnp.float32(0.5), "rho": jnp.float32(0.8)}
  state = train_lib.create_train_state(v, tx)
  return step, (state, batch_of(batch, 6, 3), jax.random.key(2), hp, eval_vars), False


def coinfer_step(batch: int = 16):
  from coinfer import train as T
  from coinfer.configs import quick

  c = quick.get_config()
  c.data.image_size, c.data.limit = 8, 64
  # SGD: Adam's first step is lr * sign(g), which turns the reassociation noise of gradients that
  # are zero in exact arithmetic (a BN bias feeding another BN) into differences of 2 lr.
  c.train.optimizer = "sgd"
  c.model.settings, c.model.last_channels = [[1, 8, 1, 2]], 16
  ctx = T.build(c)
  tx = T.make_tx(c, 10, 0.05)
  state = T.init_state(ctx, tx, jax.random.key(0))
  ids = jnp.asarray(ctx.train_ids[:2])
  teacher = {"params": copy(state.params), "batch_stats": T.models_lib.select_stats(state.batch_stats, 0)}
  step = T.make_train_step(ctx, tx, lambda r: ids, teacher=teacher)
  return step, (state, batch_of(batch, 8, 10), jax.random.key(1)), False


def subnets_step(batch: int = 16):
  from subnets import models
  from subnets import train as S

  cfg = models.ModelConfig(widths=(4, 6), dw_strides=(1,), num_classes=3)
  v = models.init_variables(cfg, jax.random.key(0), (6, 6, 3))
  tx = optax.adam(1e-2)
  step, _ = S.make_joint_steps(
    cfg, [(2, 3), (4, 6)], tx, mean=0.0, std=1.0, pis=np.array([0.4, 0.6]), augment=True
  )
  state = train_lib.create_train_state(jax.tree.map(jnp.array, v), tx)
  return step, (state, batch_of(batch, 6, 3), jax.random.key(1)), False


def branching_step(batch: int = 16):
  from branching import network as bcfg
  from branching import train as B
  from branching.configs import quick
  from branching.models import AnyNet

  c = quick.get_config()
  net = bcfg.load(c.stretched)  # two branches per stretched stage; kept to two stages of depth 1
  one_deep = lambda st: dataclasses.replace(
    st, branches=tuple(dataclasses.replace(b, depth=1) for b in st.branches)
  )
  model = AnyNet(net.replace(num_classes=10, stages=tuple(one_deep(st) for st in net.stages[:2])))
  tx = B.make_optimizer(c.train, 10, 5)
  v = model.init(jax.random.key(0), np.zeros((1, 8, 8, 3), np.float32), train=False)
  state = B.EmaState(
    jnp.zeros((), jnp.int32), v["params"], v["batch_stats"], tx.init(v["params"]), copy(v["params"]),
    copy(v["batch_stats"]),
  )  # fmt: skip
  step, _, _ = B.make_steps(model, tx, mean=np.zeros(3), std=np.ones(3), ema_decay=0.99)
  return step, (state, batch_of(batch, 8, 10), jax.random.key(1)), False


def offload_step(batch: int = 16):
  from offload import bucket, dqn, sequences
  from offload import data as odata
  from offload.models import DQNConfig, QNetwork

  d = odata.prepare(odata.synthetic(4000, seed=0))
  seq = np.asarray(
    sequences.image_sequences(jax.random.key(0), n=len(d.train.metrics), num=4, length=600, stype=1)
  )
  pool = dqn.Pool(
    jnp.asarray(d.train.metrics[seq]), jnp.asarray(d.train.rewards[seq]), jnp.ones(seq.shape, jnp.int32)
  )
  q, p, m = bucket.discretize(0.1, 4)
  net = QNetwork(DQNConfig(nhist1=15), m + 1)
  rows = batch
  state = dqn.init_rows(jax.random.split(jax.random.key(1), rows), net, jnp.full((rows,), 1e-3))
  step = dqn.make_batched_iteration(net, dqn.FQIConfig(gbsz=32, ngdup=4, discount=0.99))
  pmf = dqn.padded_pmf(bucket.interval_pmf(None))
  qs, ps, ms = (jnp.full((rows,), v, jnp.int32) for v in (q, p, m))
  keys = jax.random.split(jax.random.key(2), rows)
  return step, (state, keys, qs, ps, ms, pool, pmf), True


BUILDERS = {
  "common": common_step, "agile": agile_step, "coinfer": coinfer_step, "subnets": subnets_step,
  "branching": branching_step, "offload": offload_step,
}  # fmt: skip
