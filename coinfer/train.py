"""Training machinery of the switchable CNN: the run context, optimiser, multi-setup train step,
evaluation and BN re-calibration, and restoring a finished training.

The steps that use it (Initialization, Clustering, Distillation, the individual models) are in
`coinfer.pipeline`. The multi-setup step sums the losses of the step's setups (a static loop over
the K ids; the reference calls backward once per setup) and writes each setup's BN statistics into
its own row; the ids are drawn inside the jitted step, so one compile serves the whole run.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from coinfer import compress
from coinfer import losses as loss_lib
from coinfer import models as models_lib
from common import checkpoint as ckpt
from common import config as cfg_lib
from common import data as data_lib
from common import sharding
from common import train as train_lib
from common.errors import ConfigError, InfeasibleError

ABLATIONS = ("I-D-C", "noI-D-C", "I-noD-C", "I-D-noC", "noI-noD-C", "I-noD-noC", "noI-D-noC", "noI-noD-noC")


@dataclasses.dataclass(frozen=True)
class Context:
  """What every stage needs, built once from the config."""

  config: ml_collections.ConfigDict
  train_ds: data_lib.Dataset
  test_ds: data_lib.Dataset
  mean: np.ndarray
  std: np.ndarray
  model: models_lib.SplitNet
  setups: list
  setups_arr: np.ndarray  # [S, 2]
  train_ids: np.ndarray  # setup ids the SW-CNN trains on
  largest: int
  smallest: int
  teacher_id: int


def build(config: ml_collections.ConfigDict) -> Context:
  train_ds, test_ds = data_lib.load(
    config.data.name,
    data_dir=config.data.data_dir or None,
    image_size=config.data.image_size,
    limit=config.data.limit,
  )
  mean, std = data_lib.channel_stats(train_ds)
  mcfg = model_config(config, train_ds.num_classes)
  setups = compress.make_setups(config.setups.channels, config.setups.bits)
  arr = compress.setups_array(setups)
  train_ids = np.asarray([i for i, s in enumerate(setups) if s.bits in config.setups.train_bits], np.int32)
  if train_ids.size == 0:
    raise ConfigError(
      f"config.setups.train_bits = {list(config.setups.train_bits)}: none of them is in setups.bits"
    )
  rate = arr[:, 0] * arr[:, 1]
  largest = int(train_ids[np.argmax(rate[train_ids])])
  smallest = int(train_ids[np.argmin(rate[train_ids])])
  teacher_id = int(np.argmax(rate))
  return Context(
    config,
    train_ds,
    test_ds,
    mean,
    std,
    models_lib.SplitNet(mcfg),
    setups,
    arr,
    train_ids,
    largest,
    smallest,
    teacher_id,
  )


def model_config(config: ml_collections.ConfigDict, num_classes: int) -> models_lib.ModelConfig:
  """`config.model` as the frozen ModelConfig, with what the data and the setups fix."""
  section = dict(config.model.to_dict(), settings=tuple(tuple(r) for r in config.model.settings))
  section.update(num_classes=num_classes, stem_channels=max(config.setups.channels))
  return cfg_lib.to_dataclass(models_lib.ModelConfig, section, "model")


def make_tx(config: ml_collections.ConfigDict, total_steps: int, lr: float) -> optax.GradientTransformation:
  """SGD with Nesterov momentum (the reference) or Adam, with linear decay to zero."""
  schedule = optax.linear_schedule(lr, 0.0, max(total_steps, 1))
  if config.train.optimizer == "sgd":
    opt = optax.sgd(schedule, momentum=0.9, nesterov=True)
  else:
    opt = optax.adam(schedule)
  wd = optax.add_decayed_weights(config.train.weight_decay, mask=_decay_mask)
  return optax.chain(wd, opt)


def _decay_mask(params):
  # weight decay on conv and dense kernels only (not BN, not biases), as the reference
  return jax.tree_util.tree_map_with_path(lambda p, _: p[-1].key == "kernel", params)


def init_state(ctx: Context, tx, key) -> train_lib.TrainState:
  h, w, c = ctx.train_ds.image_shape
  x = jnp.zeros((1, h, w, c), jnp.float32)
  variables = ctx.model.init(key, x, jnp.int32(1), jnp.int32(8), train=False)
  state = train_lib.create_train_state(variables, tx)
  return state.replace(batch_stats=models_lib.stack_stats(state.batch_stats, len(ctx.setups)))


def prep(ctx: Context, x):
  """Images as the model takes them: float32, normalised with the training set's channel statistics."""
  return data_lib.normalize(jnp.asarray(x, jnp.float32), ctx.mean, ctx.std)


def _setup_grads(model, arr, params, stats, x, labels, soft, ids):
  """(gradients, BN statistics, mean loss, mean accuracy) of one step over the setups `ids`:
  one loss per setup (soft targets when `soft` is given), summed, and one gradient of the sum (the
  reference calls backward once per setup, accumulating). K is static, so this is a Python loop:
  XLA:CPU runs the same work as a `lax.scan` (a while loop) about 10x slower."""

  def loss_fn(p):
    total, rows, losses, accs = 0.0, [], [], []
    for k in range(ids.shape[0]):
      idx = ids[k]
      variables = {"params": p, "batch_stats": models_lib.select_stats(stats, idx)}
      (logits, _), new = model.apply(
        variables, x, arr[idx, 0], arr[idx, 1], train=True, mutable=["batch_stats"]
      )
      if soft is None:
        loss = train_lib.cross_entropy(logits, labels)
      else:
        loss = loss_lib.soft_cross_entropy(logits=logits, targets=soft)
      total = total + loss
      rows.append(new["batch_stats"])
      losses.append(loss)
      accs.append(train_lib.accuracy(logits, labels))
    return total, (rows, jnp.stack(losses), jnp.stack(accs))

  grads, (rows, losses, accs) = jax.grad(loss_fn, has_aux=True)(params)
  for k, row in enumerate(rows):  # in order: a setup drawn twice keeps its last statistics
    stats = models_lib.update_stats(stats, ids[k], row)
  return grads, stats, losses.mean(), accs.mean()


def make_train_step(
  ctx: Context,
  tx: optax.GradientTransformation,
  pick_ids: Callable[[jax.Array], jax.Array] | None,
  *,
  teacher: Any | None = None,
):
  """A jitted `(state, batch, rng, ids=None) -> (state, metrics)` over the setups of the step.

  Args:
    pick_ids: rng -> int32 [K] setup ids trained in this step (traced; K static). None: the
      caller passes `ids` to every call instead (one compile serves any ids of the same K,
      e.g. the individually trained models, one setup each, trained one after another).
    teacher: frozen {"params", "batch_stats"} of the teacher setup; None trains on hard labels.
  """
  arr = jnp.asarray(ctx.setups_arr)
  model = ctx.model
  augment = ctx.config.train.augment

  @sharding.jit_step
  def train_step(state: train_lib.TrainState, batch: dict, rng: jax.Array, ids: jax.Array | None = None):
    k_aug, k_ids = jax.random.split(rng)
    x = prep(ctx, batch["image"])
    if augment:
      x = data_lib.augment(k_aug, x, flip=False, pad=2)
    soft = None
    if teacher is not None:
      c, b = arr[ctx.teacher_id, 0], arr[ctx.teacher_id, 1]
      t_logits, _ = model.apply(teacher, x, c, b, train=False)
      soft = jax.nn.softmax(jax.lax.stop_gradient(t_logits))
    if ids is None:
      ids = pick_ids(k_ids)
    grads, stats, loss, acc = _setup_grads(
      model, arr, state.params, state.batch_stats, x, batch["label"], soft, ids
    )
    state = train_lib.apply_gradients(state, grads, tx, batch_stats=stats)
    return state, {"loss": loss, "accuracy": acc}

  return train_step


# ---------------------------------------------------------------- evaluation


def make_eval_fn(ctx: Context, batch_size: int = 128, chunk: int = 10):
  """`(params, stacked_stats, ids) -> correct [len(ids), N_test] bool`.

  The setups run `chunk` at a time in one vmapped pass (shared weights, so the convolutions
  see a `chunk`-times larger batch); the last chunk is padded, so one compile serves any ids.
  """
  arr = jnp.asarray(ctx.setups_arr)
  model = ctx.model

  @jax.jit
  def logits_fn(params, stacked, ids, x):
    def one(idx):
      v = {"params": params, "batch_stats": models_lib.select_stats(stacked, idx)}
      return model.apply(v, x, arr[idx, 0], arr[idx, 1], train=False)[0]

    return jax.vmap(one)(ids)

  def evaluate(params, stacked, ids) -> np.ndarray:
    ids = np.asarray(ids, np.int32).ravel()
    width = min(chunk, len(ids))
    rows = []
    for start in range(0, len(ids), width):
      part = ids[start : start + width]
      padded = jnp.asarray(np.concatenate([part, np.full(width - len(part), part[0], np.int32)]))
      out = []
      for batch in data_lib.batches(ctx.test_ds, batch_size, drop_last=False):
        logits = logits_fn(params, stacked, padded, prep(ctx, batch["image"]))
        pred = np.asarray(jnp.argmax(logits, -1))[: len(part)]
        n = int(batch["mask"].sum())
        out.append(pred[:, :n] == batch["label"][None, :n])
      rows.append(np.concatenate(out, axis=1))
    return np.concatenate(rows, axis=0)

  return evaluate


def calibrate_bn(ctx: Context, params, stacked, ids, *, batches: int, batch_size: int = 128):
  """Re-estimates each setup's BN statistics as the plain average over `batches` training batches.

  The running averages of setups sampled only now and then lag behind the shared weights;
  re-estimating them after training is what slimmable / US-Nets do. Only the rows in `ids`
  change; weights are untouched.
  """
  if batches <= 0:
    return stacked
  arr = jnp.asarray(ctx.setups_arr)
  model = ctx.model

  @jax.jit
  def stats_of(params, stacked, idx, x):
    v = {"params": params, "batch_stats": models_lib.select_stats(stacked, idx)}
    _, new = model.apply(v, x, arr[idx, 0], arr[idx, 1], train=True, mutable=["batch_stats"])
    # with momentum m, new = m*old + (1-m)*batch; recover the batch statistic exactly
    m = models_lib.BN_MOMENTUM
    return jax.tree.map(lambda n, o: (n - m * o) / (1 - m), new["batch_stats"], v["batch_stats"])

  bs = min(batch_size, len(ctx.train_ds))
  data = list(data_lib.batches(ctx.train_ds, bs, key=jax.random.key(0)))[:batches]
  for idx in np.asarray(ids):
    rows = [stats_of(params, stacked, int(idx), prep(ctx, b["image"])) for b in data]
    mean_row = jax.tree.map(lambda *r: jnp.mean(jnp.stack(r), 0), *rows)
    stacked = models_lib.update_stats(stacked, int(idx), mean_row)
  return stacked


# ---------------------------------------------------------------- clustering


def gradient_similarity(ctx: Context, teacher: dict, steps: int) -> np.ndarray:
  """Per training setup, the cosine similarity of the gradient of the server's first projection
  filter with that of the largest setup, summed over `steps` training batches (the clustering
  feature)."""
  arr = jnp.asarray(ctx.setups_arr)
  ids = jnp.asarray(ctx.train_ids)

  @jax.jit
  def similarities(x, labels):
    def filter_grad(idx):
      def loss_fn(p):
        v = {"params": p, "batch_stats": teacher["batch_stats"]}
        (logits, _), _ = ctx.model.apply(v, x, arr[idx, 0], arr[idx, 1], train=True, mutable=["batch_stats"])
        return train_lib.cross_entropy(logits, labels)

      g = jax.grad(loss_fn)(teacher["params"])
      return g["server"]["block1_project"]["kernel"][0, 0, :, 0]

    g = jax.lax.map(filter_grad, ids)  # [S_train, 32]
    ref = filter_grad(jnp.int32(ctx.largest))
    return g @ ref / (jnp.linalg.norm(g, axis=1) * jnp.linalg.norm(ref) + 1e-12)

  bs = min(ctx.config.train.batch_size, len(ctx.train_ds))
  key = jax.random.fold_in(jax.random.key(ctx.config.seed), 2)
  feature = np.zeros(len(ctx.train_ids))
  for i, batch in enumerate(data_lib.batches(ctx.train_ds, bs, key=key)):
    if i >= steps:
      break
    feature += np.asarray(similarities(prep(ctx, batch["image"]), batch["label"]))
  return feature


def search_eps(values: np.ndarray, num_clusters: int) -> tuple[float, np.ndarray]:
  """eps for 1-D DBSCAN(min_samples=1) giving exactly `num_clusters` clusters, and the labels.

  With min_samples=1 the clusters are the runs of sorted values whose gaps are <= eps, so
  the count falls as eps crosses each gap: eps halfway between the (k-1)-th and k-th largest
  gaps gives k clusters. The result is checked with scikit-learn's DBSCAN.
  """
  from sklearn.cluster import DBSCAN

  v = np.sort(np.asarray(values, float).ravel())
  gaps = np.sort(np.diff(v))[::-1]
  distinct = int((gaps > 0).sum()) + 1
  if not 1 <= num_clusters <= distinct:
    raise InfeasibleError(
      f"cannot form {num_clusters} clusters from {distinct} distinct feature values; "
      f"set config.cluster.num_clusters in [1, {distinct}]"
    )
  hi = gaps[num_clusters - 2] if num_clusters >= 2 else (v[-1] - v[0]) * 2 + 1.0
  lo = gaps[num_clusters - 1] if num_clusters - 1 < len(gaps) else 0.0
  eps = float((hi + lo) / 2) if hi > lo else float(hi)
  eps = max(eps, 1e-12)
  labels = DBSCAN(eps=eps, min_samples=1).fit(np.asarray(values, float).reshape(-1, 1)).labels_
  if len(set(labels)) != num_clusters:
    raise InfeasibleError(f"DBSCAN found {len(set(labels))} clusters at eps={eps}, not {num_clusters}")
  return eps, labels


# ---------------------------------------------------------------- state I/O


def loop_config(config, stage_cfg, desc: str, n_train: int) -> train_lib.LoopConfig:
  return train_lib.LoopConfig(
    num_epochs=stage_cfg.epochs,
    batch_size=min(config.train.batch_size, n_train),
    log_every=config.train.log_every,
    checkpoint_every=config.train.checkpoint_every,
    desc=desc,
    max_steps=stage_cfg.max_steps or None,
  )


def total_steps(loop: train_lib.LoopConfig, n: int) -> int:
  spe = data_lib.num_batches(n, loop.batch_size, drop_last=True)
  t = spe * loop.num_epochs
  return min(t, loop.max_steps) if loop.max_steps else t


def teacher(ctx: Context, workdir: Path) -> dict:
  """The finished initialization model: {"params", "batch_stats"} of the teacher setup."""
  like = init_state(ctx, make_tx(ctx.config, 1, ctx.config.init.lr), jax.random.key(0))
  state = ckpt.restore_finished(Path(workdir) / "init", like, run_first="edgeinfer coinfer init")
  return {"params": state.params, "batch_stats": models_lib.select_stats(state.batch_stats, ctx.teacher_id)}
