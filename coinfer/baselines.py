"""CLIO and SPINN trained on the same data, evaluated as accuracy against residual rate.

CLIO (digest 5.1): all widths trained together on hard labels (summed losses), no quantisation
in training, started from the initialization model (`baselines.clio_from_init`); tested at
every width x bits. SPINN (digest 5.2): CE(final) + 0.15 CE(exit); a
sample exits early when the exit's max softmax >= threshold, otherwise the raw image is sent
(residual rate 1 per offloaded image), so its rate is the offloaded fraction.
"""

from __future__ import annotations

import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from coinfer import compress
from coinfer import models as models_lib
from coinfer import train as T
from common import data as data_lib
from common import sharding
from common import train as train_lib


def clio_from_teacher(variables: dict, teacher: dict) -> dict:
  """CLIO's variables with the initialization model's weights copied in, as the reference does.

  The shared stem and stem BN come from the teacher's device part; every server copy takes the
  teacher's server part except its first conv (w -> 32 channels, 1x1 here, 3x3 from 32 in the
  teacher), which keeps its fresh initialisation, as the reference's replaced conv does. The
  per-width slice BNs stay fresh. Paths whose shapes differ are left as they are.
  """
  from flax.traverse_util import flatten_dict, unflatten_dict

  def source(path):
    head, rest = path[0], path[1:]
    if head in ("stem", "stem_bn"):
      return ("device", head, *rest)
    if head.startswith("servers_") and rest and rest[0] != "decoder":
      return ("server", *rest)
    return None

  out = {}
  for col in ("params", "batch_stats"):
    flat, src = flatten_dict(variables[col]), flatten_dict(teacher[col])
    for path, leaf in flat.items():
      s = source(path)
      if s is not None and s in src and src[s].shape == leaf.shape:
        flat[path] = jnp.array(src[s], leaf.dtype)  # a copy: the train step donates its buffers
    out[col] = unflatten_dict(flat)
  return out


def _fit(ctx: T.Context, workdir: Path, model, loss_fn, name: str, key, start=None):
  cfg = ctx.config
  loop = T.loop_config(cfg, cfg.baselines, name, len(ctx.train_ds))
  tx = T.make_tx(cfg, T.total_steps(loop, len(ctx.train_ds)), cfg.baselines.lr)
  h, w, c = ctx.train_ds.image_shape
  k_init, k_fit = jax.random.split(key)
  variables = model.init(k_init, jnp.zeros((1, h, w, c)), train=False)
  if start is not None:
    variables = start(variables)
  state = train_lib.create_train_state(variables, tx)

  @sharding.jit_step
  def step(state, batch, rng):
    x = data_lib.augment(rng, T.prep(ctx, batch["image"]), flip=False, pad=2)

    def f(p):
      out, new = model.apply(
        {"params": p, "batch_stats": state.batch_stats}, x, train=True, mutable=["batch_stats"]
      )
      return loss_fn(out, batch["label"]), new["batch_stats"]

    (loss, stats), g = jax.value_and_grad(f, has_aux=True)(state.params)
    return train_lib.apply_gradients(state, g, tx, batch_stats=stats), {"loss": loss}

  state, _ = train_lib.fit(
    state, step, ctx.train_ds, loop, key=k_fit, workdir=workdir, checkpoint_subdir=name, tags={"stage": name}
  )
  return state


def train_clio(ctx: T.Context, workdir: Path) -> dict:
  cfg = ctx.config
  widths = tuple(int(w) for w in cfg.baselines.clio_widths)
  model = models_lib.ClioNet(ctx.model.config, widths=widths)

  def loss_fn(outs, labels):
    return sum(train_lib.cross_entropy(o, labels) for o in outs)

  start = None
  if cfg.baselines.clio_from_init:
    teacher = T.teacher(ctx, workdir)
    start = functools.partial(clio_from_teacher, teacher=teacher)
  key = jax.random.fold_in(jax.random.key(cfg.seed), 5)
  state = _fit(ctx, workdir, model, loss_fn, "clio", key, start=start)
  v = {"params": state.params, "batch_stats": state.batch_stats}

  @jax.jit
  def preds(x, bits):
    return jnp.stack([jnp.argmax(o, -1) for o in model.apply(v, x, bits, train=False)])

  rows = []
  shape = ctx.test_ds.image_shape
  for b in cfg.setups.bits:
    hits = []
    for batch in data_lib.batches(ctx.test_ds, 128, drop_last=False):
      n = int(batch["mask"].sum())
      hits.append(np.asarray(preds(T.prep(ctx, batch["image"]), jnp.float32(b)))[:, :n] == batch["label"][:n])
    acc = np.concatenate(hits, axis=1).mean(axis=1)
    for w, a in zip(widths, acc, strict=True):
      rows.append(
        {
          "channels": w,
          "bits": int(b),
          "residual_rate": compress.residual_rate(w, b, shape),
          "accuracy": float(a),
        }
      )
  return {"points": rows}


def train_spinn(ctx: T.Context, workdir: Path) -> dict:
  cfg = ctx.config
  model = models_lib.SpinnNet(ctx.model.config)
  wexit = cfg.baselines.spinn_exit_weight

  def loss_fn(outs, labels):
    return train_lib.cross_entropy(outs[0], labels) + wexit * train_lib.cross_entropy(outs[1], labels)

  state = _fit(ctx, workdir, model, loss_fn, "spinn", jax.random.fold_in(jax.random.key(cfg.seed), 6))
  v = {"params": state.params, "batch_stats": state.batch_stats}
  apply = jax.jit(lambda x: model.apply(v, x, train=False))
  finals, exits = [], []
  for batch in data_lib.batches(ctx.test_ds, 128, drop_last=False):
    n = int(batch["mask"].sum())
    f, e = apply(T.prep(ctx, batch["image"]))
    finals.append(np.asarray(f)[:n])
    exits.append(np.asarray(e)[:n])
  final, ex = np.concatenate(finals), np.concatenate(exits)
  labels = ctx.test_ds.labels
  conf = np.asarray(jax.nn.softmax(jnp.asarray(ex))).max(-1)
  rows = []
  for thr in cfg.baselines.spinn_thresholds:
    offload = conf < thr
    pred = np.where(offload, final.argmax(-1), ex.argmax(-1))
    rows.append(
      {
        "threshold": float(thr),
        "residual_rate": float(offload.mean()),
        "accuracy": float((pred == labels).mean()),
      }
    )
  return {"points": rows, "final_accuracy": float((final.argmax(-1) == labels).mean())}
