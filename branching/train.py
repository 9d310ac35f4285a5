"""Training a stretched model and its single-branch original with the same pycls-style recipe.

Recipe (pycls `dds_baselines`, NN-Stretch §3): SGD with Nesterov momentum 0.9,
weight decay on every parameter, cosine learning rate (optional linear warmup),
an exponential moving average of the weights and batch statistics, and
evaluation with the EMA weights. Each model trains in its own sub-workdir with
`common.train.fit` (metrics.jsonl, orbax checkpoints, automatic resume).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax

from branching import flops, losses
from branching import network as bcfg
from branching.models import AnyNet, param_count
from common import config as ccfg
from common import data as data_lib
from common import sharding
from common import train as train_lib


@flax.struct.dataclass
class EmaState:
  """Training state with an EMA copy of the parameters and batch statistics."""

  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  ema_params: Any
  ema_batch_stats: Any


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks every training key (ConfigError naming key, value and range)."""
  ccfg.check_seed(config)
  ccfg.check_numbers(config)
  ccfg.check_range(config, "data.image_size", 8, 1024, integer=True)
  ccfg.check_range(config, "data.limit", 0, integer=True)
  ccfg.check_range(config, "train.num_epochs", 1, 10_000, integer=True)
  ccfg.check_range(config, "train.batch_size", 1, 65_536, integer=True)
  ccfg.check_range(config, "train.base_lr", 0.0, 10.0, lo_open=True)
  ccfg.check_range(config, "train.momentum", 0.0, 1.0, hi_open=True)
  ccfg.check_range(config, "train.weight_decay", 0.0, 1.0)
  ccfg.check_range(config, "train.warmup_epochs", 0, 1000, integer=True)
  ccfg.check_range(config, "train.ema_decay", 0.0, 1.0, hi_open=True)
  ccfg.check_range(config, "train.eval_every", 0, integer=True)
  ccfg.check_range(config, "train.checkpoint_every", 0, integer=True)


def make_optimizer(
  tc: ml_collections.ConfigDict, steps: int, steps_per_epoch: int
) -> optax.GradientTransformation:
  warm = tc.warmup_epochs * steps_per_epoch
  sched = optax.warmup_cosine_decay_schedule(
    tc.base_lr * (0.1 if warm else 1.0), tc.base_lr, max(warm, 0), max(steps, warm + 1), 0.0
  )
  return optax.chain(
    optax.add_decayed_weights(tc.weight_decay), optax.sgd(sched, momentum=tc.momentum, nesterov=True)
  )


def make_steps(model: AnyNet, tx, *, mean, std, ema_decay: float):
  """Jitted (train_step with donated state, eval_step summing loss/accuracy over the masked batch)."""

  def prep(x):
    return data_lib.normalize(jnp.asarray(x, jnp.float32), mean, std)

  @sharding.jit_step
  def train_step(state: EmaState, batch: dict, rng: jax.Array):
    x = data_lib.augment(rng, prep(batch["image"]), flip=False, pad=2)

    def loss_fn(params):
      return losses.classification_loss(model, params, state.batch_stats, x, batch["label"])

    (loss, (logits, bs)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    state = train_lib.apply_gradients(state, grads, tx, batch_stats=bs)
    # EMA with the usual warm-up (decay grows to ema_decay), so short runs do not keep the init.
    t = state.step.astype(jnp.float32)
    decay = jnp.minimum(ema_decay, (1.0 + t) / (10.0 + t))
    ema = functools.partial(jax.tree_util.tree_map, lambda e, p: decay * e + (1.0 - decay) * p)
    state = state.replace(
      ema_params=ema(state.ema_params, state.params), ema_batch_stats=ema(state.ema_batch_stats, bs)
    )
    return state, {"loss": loss, "accuracy": train_lib.accuracy(logits, batch["label"])}

  @jax.jit
  def eval_vars(params, batch_stats, batch: dict):
    logits, _ = model.apply({"params": params, "batch_stats": batch_stats}, prep(batch["image"]), train=False)
    m = batch["mask"]
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
    return {"loss": (ce * m).sum(), "accuracy": ((jnp.argmax(logits, -1) == batch["label"]) * m).sum()}

  # One compiled evaluation serves both weight sets (EMA, as pycls tests, and the raw weights).
  def eval_ema(state: EmaState, batch: dict):
    return eval_vars(state.ema_params, state.ema_batch_stats, batch)

  def eval_raw(state: EmaState, batch: dict):
    return eval_vars(state.params, state.batch_stats, batch)

  return train_step, eval_ema, eval_raw


def train_one(
  net: bcfg.NetConfig,
  config: ml_collections.ConfigDict,
  train_ds: data_lib.Dataset,
  test_ds: data_lib.Dataset,
  workdir: Path,
  key: jax.Array,
  *,
  show_progress: bool = True,
) -> dict:
  """Trains one network; returns accuracies, counts, and the model and EMA variables."""
  net = net.replace(num_classes=train_ds.num_classes)
  model = AnyNet(net)
  mean, std = data_lib.channel_stats(train_ds)
  tc = config.train
  spe = data_lib.num_batches(len(train_ds), tc.batch_size, drop_last=True)
  tx = make_optimizer(tc, spe * tc.num_epochs, spe)
  init_key, fit_key = jax.random.split(key)
  variables = model.init(init_key, jnp.zeros((1, *train_ds.image_shape), jnp.float32), train=False)
  params, bs = variables["params"], variables.get("batch_stats", {})
  copy = functools.partial(jax.tree_util.tree_map, jnp.copy)
  state = EmaState(jnp.zeros((), jnp.int32), params, bs, tx.init(params), copy(params), copy(bs))
  train_step, eval_ema, eval_raw = make_steps(model, tx, mean=mean, std=std, ema_decay=tc.ema_decay)
  loop = train_lib.LoopConfig(
    num_epochs=tc.num_epochs,
    batch_size=tc.batch_size,
    eval_every=tc.eval_every,
    checkpoint_every=tc.checkpoint_every,
    keep=1,
    desc=f"branching: {net.name}",
  )
  state, history = train_lib.fit(
    state,
    train_step,
    train_ds,
    loop,
    key=fit_key,
    workdir=workdir,
    evaluate=lambda s: train_lib.evaluate_batches(eval_ema, s, test_ds, min(256, len(test_ds))),
    show_progress=show_progress,
  )
  raw = train_lib.evaluate_batches(eval_raw, state, test_ds, min(256, len(test_ds)))
  cnt = flops.count(net, train_ds.image_shape[0])
  return {
    "name": net.name,
    "ema_accuracy": history[-1]["accuracy"],
    "accuracy": raw["accuracy"],
    "macs": cnt["macs"],
    "params": param_count(state.params),
    "model": model,
    "variables": {"params": state.ema_params, "batch_stats": state.ema_batch_stats},
    "mean": mean,
    "std": std,
  }


def load_data(config: ml_collections.ConfigDict):
  return data_lib.load(
    config.data.name,
    data_dir=config.data.data_dir or None,
    image_size=config.data.image_size,
    limit=config.data.limit or None,
  )


def train_and_evaluate(
  config: ml_collections.ConfigDict, workdir: str | Path, *, show_progress: bool = True
) -> dict:
  """Trains the original and the stretched network with the same recipe and seed.

  Returns {"original": result, "stretched": result}; each result as `train_one`.
  """
  validate(config)
  workdir = Path(workdir)
  train_ds, test_ds = load_data(config)
  key = jax.random.key(config.seed)
  k_orig, k_str = jax.random.split(key)
  out = {}
  for role, path, k in (("original", config.original, k_orig), ("stretched", config.stretched, k_str)):
    net = bcfg.load(path)
    out[role] = train_one(net, config, train_ds, test_ds, workdir / role, k, show_progress=show_progress)
  return out
