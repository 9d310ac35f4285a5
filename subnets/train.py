"""Training pieces of REDS: the dense model, gradient accumulation, joint fine-tuning.

* `train_dense`: an ordinary classifier run (BN in training mode) through
  `common.train.fit`, also used for the "scratch" baseline at each width.
* `accumulate_grads`: G = sum over N mini-batches of dL/dW (training-mode
  forward, batch statistics discarded), the digest's importance gradient.
* `finetune`: all subnetworks on every batch, loss sum_k pi_k CE_k with
  pi_k = sqrt(p_k) / sum_j sqrt(p_j), p_k the fraction of (non-BN) parameters
  of subnetwork k. As in the original, BN parameters and statistics are shared
  and prefix-sliced and BN runs in inference mode with the pre-trained moving
  statistics: stage 1 trains everything except BN; stage 2 (`part="bn"`)
  trains only BN scale and bias.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from common import classifier, sharding
from common import data as data_lib
from common import train as train_lib
from subnets import losses as losses_lib
from subnets import models, surgery


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  epochs: int
  lr: float
  batch_size: int
  augment: bool = True
  eval_every: int = 0
  max_steps: int = 0
  checkpoint_every: int = 0  # steps between checkpoints; 0 = only at the end


def _loop(tc: TrainConfig, desc: str) -> train_lib.LoopConfig:
  return train_lib.LoopConfig(
    num_epochs=tc.epochs,
    batch_size=tc.batch_size,
    eval_every=tc.eval_every,
    checkpoint_every=tc.checkpoint_every,
    desc=desc,
    keep=1,
    max_steps=tc.max_steps or None,
  )


def _steps(tc: TrainConfig, n: int) -> int:
  s = data_lib.num_batches(n, tc.batch_size, drop_last=True) * tc.epochs
  return min(s, tc.max_steps) if tc.max_steps else s


def train_dense(
  mcfg: models.ModelConfig,
  train_ds: data_lib.Dataset,
  test_ds: data_lib.Dataset,
  tc: TrainConfig,
  *,
  key: jax.Array,
  workdir: Path,
  mean,
  std,
  desc: str = "dense",
  show_progress: bool = True,
) -> tuple[dict, float]:
  """Trains `mcfg` from scratch; returns (variables, final test accuracy)."""
  init_key, fit_key = jax.random.split(key)
  model = models.RedsNet(mcfg)
  tx = optax.adam(optax.cosine_decay_schedule(tc.lr, max(_steps(tc, len(train_ds)), 1)))
  state = train_lib.create_train_state(models.init_variables(mcfg, init_key, train_ds.image_shape), tx)
  train_step, eval_step = classifier.make_steps(model, tx, mean=mean, std=std, augment=tc.augment)
  state, hist = train_lib.fit(
    state,
    train_step,
    train_ds,
    _loop(tc, desc),
    key=fit_key,
    workdir=workdir,
    evaluate=lambda s: train_lib.evaluate_batches(eval_step, s, test_ds, 256),
    show_progress=show_progress,
  )
  return {"params": state.params, "batch_stats": state.batch_stats}, float(hist[-1]["accuracy"])


def accumulate_grads(
  mcfg: models.ModelConfig,
  variables: dict,
  ds: data_lib.Dataset,
  *,
  batch_size: int,
  num_batches: int,
  mean,
  std,
  key: jax.Array,
) -> dict:
  """G = sum over `num_batches` shuffled training batches of dCE/dparams (train-mode BN)."""
  model = models.RedsNet(mcfg)

  @jax.jit
  def grad_fn(params, batch_stats, x, y):
    def loss(p):
      (logits, _), _ = model.apply(
        {"params": p, "batch_stats": batch_stats}, x, train=True, mutable=["batch_stats"]
      )
      return train_lib.cross_entropy(logits, y)

    return jax.grad(loss)(params)

  total = jax.tree_util.tree_map(jnp.zeros_like, variables["params"])
  done, epoch = 0, 0
  bs = min(batch_size, len(ds))
  while done < num_batches:
    for batch in data_lib.batches(ds, bs, key=jax.random.fold_in(key, epoch)):
      x = data_lib.normalize(jnp.asarray(batch["image"]), mean, std)
      g = grad_fn(variables["params"], variables["batch_stats"], x, jnp.asarray(batch["label"]))
      total = jax.tree_util.tree_map(jnp.add, total, g)
      done += 1
      if done >= num_batches:
        break
    epoch += 1
  return total


def _labels(params, part: str):
  """'train' / 'freeze' per leaf: part='weights' freezes BN, part='bn' freezes all but BN."""

  def label(path, _):
    is_bn = "bn" in str(path[0].key)
    return "train" if (is_bn == (part == "bn")) else "freeze"

  return jax.tree_util.tree_map_with_path(label, params)


def make_joint_steps(mcfg, widths_list, tx, *, mean, std, pis, augment: bool, bn_batch: bool = False):
  """Jitted (train_step, eval_step) over all subnetworks at once.

  bn_batch: the training forward normalises with each subnetwork's batch statistics (BN in training mode,
  the running statistics left untouched) instead of the shared pre-trained ones; evaluation always uses
  the stored statistics.
  """
  nets = [models.RedsNet(mcfg.with_widths(w)) for w in widths_list]
  widths_list = [tuple(int(x) for x in w) for w in widths_list]

  def all_logits(variables, x, train: bool = False):
    out = []
    for net, w in zip(nets, widths_list, strict=True):
      sub = surgery.slice_variables(variables, mcfg, w)
      if train:
        out.append(net.apply(sub, x, train=True, mutable=["batch_stats"])[0][0])
      else:
        out.append(net.apply(sub, x, train=False)[0])
    return out

  @sharding.jit_step
  def train_step(state, batch, rng):
    x = data_lib.normalize(jnp.asarray(batch["image"], jnp.float32), mean, std)
    if augment:
      x = data_lib.augment(rng, x, flip=False, pad=2)
    y = batch["label"]

    def loss_fn(params):
      logits = all_logits({"params": params, "batch_stats": state.batch_stats}, x, train=bn_batch)
      return losses_lib.joint_loss(logits, y, pis)

    (loss, losses), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    state = train_lib.apply_gradients(state, grads, tx)
    return state, {"loss": loss, "loss_smallest": losses[0], "loss_dense": losses[-1]}

  @jax.jit
  def eval_step(state, batch):
    x = data_lib.normalize(jnp.asarray(batch["image"], jnp.float32), mean, std)
    m, y = batch["mask"], batch["label"]
    out = {}
    for k, lg in enumerate(all_logits({"params": state.params, "batch_stats": state.batch_stats}, x)):
      out[f"accuracy_{k}"] = ((jnp.argmax(lg, -1) == y) * m).sum()
    return out

  return train_step, eval_step


def finetune(
  mcfg: models.ModelConfig,
  variables: dict,
  widths_list: Sequence[Sequence[int]],
  train_ds: data_lib.Dataset,
  test_ds: data_lib.Dataset,
  tc: TrainConfig,
  *,
  part: str,
  key: jax.Array,
  workdir: Path,
  mean,
  std,
  desc: str,
  show_progress: bool = True,
  weighting: str = "sqrt_params",
  bn_batch: bool = False,
) -> tuple[dict, list[float]]:
  """Joint fine-tuning of all subnetworks; returns (variables, test accuracy per subnetwork).

  weighting: the loss weights (`subnets.losses.loss_weights`); bn_batch: see `make_joint_steps`.
  """
  pis = losses_lib.loss_weights(mcfg, widths_list, train_ds.image_shape, weighting)
  variables = jax.tree_util.tree_map(jnp.array, variables)  # the step donates its state: copy
  n_steps = max(_steps(tc, len(train_ds)), 1)
  inner = optax.adam(optax.cosine_decay_schedule(tc.lr, n_steps))
  tx = optax.multi_transform(
    {"train": inner, "freeze": optax.set_to_zero()}, _labels(variables["params"], part)
  )
  state = train_lib.create_train_state(variables, tx)
  train_step, eval_step = make_joint_steps(
    mcfg, widths_list, tx, mean=mean, std=std, pis=pis, augment=tc.augment, bn_batch=bn_batch
  )
  evaluate = functools.partial(train_lib.evaluate_batches, eval_step, ds=test_ds, batch_size=256)
  if tc.epochs == 0:
    acc = evaluate(state)
    return variables, [acc[f"accuracy_{k}"] for k in range(len(widths_list))]
  state, hist = train_lib.fit(
    state,
    train_step,
    train_ds,
    _loop(tc, desc),
    key=key,
    workdir=workdir,
    evaluate=lambda s: evaluate(s),
    show_progress=show_progress,
  )
  out = {"params": state.params, "batch_stats": state.batch_stats}
  return out, [float(hist[-1][f"accuracy_{k}"]) for k in range(len(widths_list))]


def evaluate_subnets(mcfg, variables, widths_list, test_ds, *, mean, std) -> list[float]:
  """Test accuracy of each subnetwork (BN in inference mode)."""
  _, eval_step = make_joint_steps(
    mcfg, widths_list, optax.identity(), mean=mean, std=std, pis=np.ones(len(widths_list)), augment=False
  )
  state = train_lib.create_train_state(variables, optax.identity())
  acc = train_lib.evaluate_batches(eval_step, state, test_ds, 256)
  return [float(acc[f"accuracy_{k}"]) for k in range(len(widths_list))]
