"""AgileNN training: the reference network, the grad-of-grad step, and `train_agile`.

One jitted `train_step` computes, for a batch: the features f, the combined
prediction, CE, the integrated-gradients importance of f under the frozen
evaluator (an inner `jax.grad`), the skewness and disorder losses, and the
gradient of LAMBDA * CE + (1 - LAMBDA) * (L_skew + L_dis) with respect to the
AgileNN parameters (the outer `jax.grad`: reverse over reverse through the
evaluator). LAMBDA and RHO are traced arguments, so sweeping them does not
recompile.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from agile import codebook, losses, reference, xai
from agile import data as agile_data
from agile.models import AgileConfig, AgileNN, init_variables
from common import checkpoint as ckpt_lib
from common import config as cfg_lib
from common import data as data_lib
from common import sharding
from common import train as train_lib


def sgdw(learning_rate: float, total_steps: int, *, momentum: float = 0.9, weight_decay: float = 5e-4):
  """tfa SGDW with wd_t = weight_decay * lr_t and a cosine schedule to 0, in optax."""
  schedule = optax.cosine_decay_schedule(learning_rate, max(total_steps, 1))
  return optax.chain(
    optax.trace(momentum), optax.add_decayed_weights(weight_decay), optax.scale_by_learning_rate(schedule)
  )


# ------------------------------------------------------------------ reference network


def make_reference_steps(net: reference.ReferenceNet, tx, prep: agile_data.Preprocess):
  """Jitted (train_step, eval_step) of the reference network (dropout rng from the step key)."""

  @sharding.jit_step
  def train_step(state, batch, rng):
    aug_rng, drop_rng = jax.random.split(rng)
    x = prep(batch["image"], aug_rng)

    def loss_fn(params):
      (logits, _), new_vars = net.apply(
        {"params": params, "batch_stats": state.batch_stats},
        x,
        train=True,
        mutable=["batch_stats"],
        rngs={"dropout": drop_rng},
      )
      return train_lib.cross_entropy(logits, batch["label"]), (logits, new_vars["batch_stats"])

    (loss, (logits, stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    state = train_lib.apply_gradients(state, grads, tx, batch_stats=stats)
    return state, {"loss": loss, "accuracy": train_lib.accuracy(logits, batch["label"])}

  @jax.jit
  def eval_step(state, batch):
    logits, _ = net.apply(
      {"params": state.params, "batch_stats": state.batch_stats}, prep(batch["image"]), train=False
    )
    hits = (jnp.argmax(logits, -1) == batch["label"]) * batch["mask"]
    return {"reference_accuracy": hits.sum()}

  return train_step, eval_step


def train_reference(
  rcfg: reference.ReferenceConfig,
  config: ml_collections.ConfigDict,
  train_ds,
  test_ds,
  prep,
  key,
  workdir: Path,
) -> tuple[dict, float]:
  """Trains (or loads) the reference network; returns its variables and test accuracy.

  The result is saved with orbax at workdir/reference/variables, and loaded from
  there (or from config.reference.path) on later runs.
  """
  r = config.reference
  net = reference.ReferenceNet(rcfg)
  init_key, fit_key = jax.random.split(key)
  variables = net.init(init_key, jnp.zeros((1, prep.input_size, prep.input_size, 3)), train=False)
  like = {"params": variables["params"], "batch_stats": variables["batch_stats"]}
  path = Path(r.path) if r.path else workdir / "reference" / "variables"
  spe = data_lib.num_batches(len(train_ds), r.batch_size, drop_last=True)
  tx = optax.adam(optax.cosine_decay_schedule(r.learning_rate, spe * r.epochs, alpha=1e-2))
  train_step, eval_step = make_reference_steps(net, tx, prep)
  if path.exists():
    loaded = ckpt_lib.load_pytree(path, like)
  else:
    state = train_lib.create_train_state(like, tx)
    loop = train_lib.LoopConfig(
      r.epochs, r.batch_size, log_every=10, checkpoint_every=r.checkpoint_every, desc="reference"
    )
    state, _ = train_lib.fit(state, train_step, train_ds, loop, key=fit_key, workdir=workdir / "reference")
    loaded = {"params": state.params, "batch_stats": state.batch_stats}
    ckpt_lib.save_pytree(path, loaded)
  state = train_lib.create_train_state(loaded, tx)
  acc = train_lib.evaluate_batches(eval_step, state, test_ds, config.train.eval_batch_size)[
    "reference_accuracy"
  ]
  return loaded, acc


# ------------------------------------------------------------------ AgileNN steps


def make_loss_fn(model: AgileNN, eval_loss: Callable, *, ig_steps: int, remat: bool = False):
  """`loss_fn(params, batch_stats, eval_vars, x, labels, hp) -> (loss, aux)` in training mode
  (`remat`: the IG gradients rematerialised, `xai.integrated_gradients`)."""
  k = model.config.k

  def loss_fn(params, batch_stats, eval_vars, x, labels, hp):
    (logits, aux), new_vars = model.apply(
      {"params": params, "batch_stats": batch_stats}, x, train=True, mutable=["batch_stats"]
    )
    ce = train_lib.cross_entropy(logits, labels)
    importance = xai.integrated_gradients(
      lambda f: eval_loss(eval_vars, f, labels),
      aux["features"],
      ig_steps,
      reference.baseline_gradient(eval_vars, labels),
      remat=remat,
    )
    loss, parts = losses.total_loss(ce, importance, k=k, rho=hp["rho"], lam=hp["lam"])
    parts["accuracy"] = train_lib.accuracy(logits, labels)
    counts = codebook.symbol_counts(jax.lax.stop_gradient(aux["symbols"]), model.config.num_centroids)
    parts["symbol_entropy_bits"] = codebook.entropy_bits(counts)
    return loss, (parts, new_vars["batch_stats"])

  return loss_fn


def make_train_step(
  model: AgileNN, eval_loss: Callable, tx, prep: agile_data.Preprocess, *, ig_steps: int, remat: bool = False
):
  """Jitted `train_step(state, batch, rng, hp, eval_vars) -> (state, metrics)`, state donated
  (`remat`: the evaluator's IG gradients rematerialised in the backward pass; the same numbers).

  hp = {"lam": scalar, "rho": scalar} are traced; eval_vars are the frozen
  evaluator body's variables (never updated).
  """
  loss_fn = make_loss_fn(model, eval_loss, ig_steps=ig_steps, remat=remat)

  @sharding.jit_step
  def train_step(state: train_lib.TrainState, batch: dict, rng: jax.Array, hp: dict, eval_vars: dict):
    x = prep(batch["image"], rng)
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (loss, (parts, stats)), grads = grad_fn(state.params, state.batch_stats, eval_vars, x, batch["label"], hp)
    state = train_lib.apply_gradients(state, grads, tx, batch_stats=stats)
    return state, {"loss": loss, **parts}

  return train_step


SYMBOL_COUNT = (
  "symbol_count_"  # eval_step's per-symbol keys, folded into `codebook.health` by `with_codebook`
)


def with_codebook(metrics: dict, num_centroids: int) -> dict:
  """Eval metrics with the per-symbol counts replaced by the codebook's health (entropy, collapse)."""
  counts = [metrics[f"{SYMBOL_COUNT}{j}"] for j in range(num_centroids)]
  rest = {k: v for k, v in metrics.items() if not k.startswith(SYMBOL_COUNT)}
  return {**rest, **codebook.health(counts, num_centroids)}


def make_eval_step(
  model: AgileNN, eval_logits: Callable, eval_loss: Callable, prep: agile_data.Preprocess, *, ig_steps: int
):
  """Jitted `eval_step(state, batch, eval_vars)` -> sums over the masked batch.

  Test skewness needs the labels (IG of the true-class CE), as in the original.
  """
  k = model.config.k

  @jax.jit
  def eval_step(state, batch, eval_vars):
    x = prep(batch["image"])
    labels, m = batch["label"], batch["mask"]
    logits, aux = model.apply({"params": state.params, "batch_stats": state.batch_stats}, x, train=False)
    importance = xai.integrated_gradients(
      lambda f: eval_loss(eval_vars, f, labels),
      aux["features"],
      ig_steps,
      reference.baseline_gradient(eval_vars, labels),
    )
    s = losses.skewness_per_example(importance, k)
    hit = lambda z: (jnp.argmax(z, -1) == labels) * m
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    ev_logits = eval_logits(eval_vars, aux["features"])
    counts = codebook.symbol_counts(aux["symbols"], model.config.num_centroids, m)
    return {
      **{f"{SYMBOL_COUNT}{j}": n for j, n in enumerate(counts)},
      "accuracy": hit(logits).sum(),
      "local_accuracy": hit(aux["local_logits"]).sum(),
      "remote_accuracy": hit(aux["remote_logits"]).sum(),
      "evaluator_on_features_accuracy": hit(ev_logits).sum(),
      "ce": (ce * m).sum(),
      "skewness": (s * m).sum(),
    }

  return eval_step


# ------------------------------------------------------------------ remapping


def compute_channel_mapping(
  model: AgileNN,
  variables: dict,
  eval_loss,
  eval_vars,
  train_ds,
  prep,
  *,
  method: str,
  batch_size: int,
  key,
  ig_steps: int,
) -> np.ndarray:
  """One pass over the augmented training set with the untrained model: channel order, most important first."""
  k = model.config.k

  @jax.jit
  def scores(batch, rng):
    x = prep(batch["image"], rng)
    _, aux = model.apply(variables, x, train=False)
    imp = xai.integrated_gradients(
      lambda f: eval_loss(eval_vars, f, batch["label"]),
      aux["features"],
      ig_steps,
      reference.baseline_gradient(eval_vars, batch["label"]),
    )
    return xai.channel_scores(imp, k, method)

  total, n = 0.0, 0
  for i, batch in enumerate(data_lib.batches(train_ds, batch_size, key=key)):
    total = total + np.asarray(scores(batch, jax.random.fold_in(key, i)))
    n += 1
  return np.argsort(-(total / max(n, 1)), kind="stable")


CENTROID_INIT_BATCHES = 4  # training batches whose remote features place the k-means centroids


def kmeans_initialised(
  model: AgileNN, variables: dict, train_ds, prep, *, batch_size: int, key, seed: int
) -> dict:
  """`variables` with the quantizer's centroids at the 1-D k-means centres of the remote features
  that the (remapped, untrained) model computes in training mode on a few augmented batches."""
  k = model.config.k

  @jax.jit
  def remote_features(batch, rng):
    _, aux = model.apply(variables, prep(batch["image"], rng), train=True, mutable=["batch_stats"])[0]
    return aux["features"][..., k:]

  values = []
  for i, batch in enumerate(data_lib.batches(train_ds, batch_size, key=key)):
    if i == CENTROID_INIT_BATCHES:
      break
    values.append(np.asarray(remote_features(batch, jax.random.fold_in(key, i))).ravel())
  centres = codebook.kmeans_centroids(np.concatenate(values), model.config.num_centroids, seed=seed)
  params = dict(variables["params"])
  params["quantizer"] = {"q_centroids": jnp.asarray(codebook.logits_of(centres))}
  return {**variables, "params": params}


# ------------------------------------------------------------------ configs -> dataclasses


def model_config(config: ml_collections.ConfigDict, num_classes: int) -> AgileConfig:
  m = {**config.model.to_dict(), "num_classes": num_classes}
  m["remote_settings"] = tuple(tuple(r) for r in m["remote_settings"])
  return cfg_lib.to_dataclass(AgileConfig, m, "model")


def reference_config(config: ml_collections.ConfigDict, num_classes: int) -> reference.ReferenceConfig:
  r = config.reference
  return reference.ReferenceConfig(
    num_classes=num_classes,
    stem_channels=config.model.feature_channels,
    stem_stride=config.model.fe_stride,
    blocks=reference.BLOCKS[r.blocks],
    top_channels=r.top_channels,
    dropout=r.dropout,
    bn_momentum=r.bn_momentum,
  )


def feature_shape(model: AgileNN, variables: dict, config: ml_collections.ConfigDict) -> tuple[int, ...]:
  """(h, w, C) of the feature map for config.input_size images."""
  x = jax.ShapeDtypeStruct((1, config.input_size, config.input_size, 3), jnp.float32)
  _, aux = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x)
  return tuple(aux["features"].shape[1:])


def hyperparams(config: ml_collections.ConfigDict) -> dict[str, jax.Array]:
  return {"lam": jnp.float32(config.train.lam), "rho": jnp.float32(config.train.rho)}


def _starting_variables(config, model, rcfg, eval_vars, eval_loss, train_ds, prep, init_key, remap_key):
  """(AgileNN's initial variables, the evaluator's variables, the channel mapping or None): the
  evaluator's IG baseline table, the feature channels remapped by importance and the centroids
  started at the untrained features' k-means centres, as the config asks."""
  t = config.train
  variables = init_variables(model, init_key, (config.input_size, config.input_size, 3))
  if t.ig_baseline_table:
    eval_vars = reference.with_baseline_gradients(rcfg, eval_vars, feature_shape(model, variables, config))
  mapping = None
  if t.channel_remapping != "none":
    mapping = compute_channel_mapping(
      model, variables, eval_loss, eval_vars, train_ds, prep, method=t.channel_remapping,
      batch_size=t.batch_size, key=remap_key, ig_steps=t.ig_steps,
    )  # fmt: skip
    variables = xai.remap_feature_channels(variables, mapping)
  if t.centroid_init == "kmeans":
    variables = kmeans_initialised(
      model, variables, train_ds, prep, batch_size=t.batch_size, key=jax.random.fold_in(remap_key, 1),
      seed=config.seed,
    )  # fmt: skip
  return variables, eval_vars, mapping


def train_agile(
  config: ml_collections.ConfigDict, workdir: Path, train_ds, test_ds, prep
) -> tuple[dict, dict]:
  """Trains the reference network, then AgileNN (resuming from workdir's checkpoints).

  Returns:
    (the final test metrics of training, the final AgileNN variables).
  """
  ref_key, init_key, remap_key, fit_key = jax.random.split(jax.random.key(config.seed), 4)

  rcfg = reference_config(config, train_ds.num_classes)
  ref_vars, ref_acc = train_reference(rcfg, config, train_ds, test_ds, prep, ref_key, workdir)
  eval_vars = reference.body_variables(ref_vars)
  eval_logits, eval_loss = reference.make_evaluator(rcfg)

  mcfg = model_config(config, train_ds.num_classes)
  model = AgileNN(mcfg)
  variables, eval_vars, mapping = _starting_variables(
    config, model, rcfg, eval_vars, eval_loss, train_ds, prep, init_key, remap_key
  )
  t = config.train
  spe = data_lib.num_batches(len(train_ds), t.batch_size, drop_last=True)
  total = spe * t.epochs if not t.max_steps else min(spe * t.epochs, t.max_steps)
  tx = sgdw(t.learning_rate, total, momentum=t.momentum, weight_decay=t.weight_decay)
  state = train_lib.create_train_state(variables, tx)
  step_fn = make_train_step(model, eval_loss, tx, prep, ig_steps=t.ig_steps)
  eval_step = make_eval_step(model, eval_logits, eval_loss, prep, ig_steps=t.ig_steps)
  hp = hyperparams(config)

  def evaluate(s):
    sums = train_lib.evaluate_batches(
      lambda st, b: eval_step(st, b, eval_vars), s, test_ds, t.eval_batch_size
    )
    return with_codebook(sums, mcfg.num_centroids)

  loop = train_lib.LoopConfig(
    t.epochs, t.batch_size, eval_every=spe * t.eval_every_epochs, log_every=max(1, min(spe, 20)),
    checkpoint_every=t.checkpoint_every, desc="agile", max_steps=t.max_steps or None,
  )  # fmt: skip
  initial = evaluate(state)
  state, history = train_lib.fit(state, lambda s, b, r: step_fn(s, b, r, hp, eval_vars), train_ds, loop,
                                 key=fit_key, workdir=workdir, evaluate=evaluate)  # fmt: skip
  final = dict(history[-1]) if history else {"step": int(state.step), **evaluate(state)}
  if final["codebook_collapsed"]:
    warnings.warn(codebook.collapse_message(final["symbol_entropy_bits"], mcfg.num_centroids), stacklevel=2)
  final["reference_accuracy"] = ref_acc
  final["initial_skewness"] = initial["skewness"]
  final["initial_accuracy"] = initial["accuracy"]
  final["k"] = mcfg.k
  final["channel_mapping"] = None if mapping is None else [int(i) for i in mapping]
  return final, {"params": state.params, "batch_stats": state.batch_stats}
