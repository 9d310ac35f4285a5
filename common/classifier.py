"""Train and evaluate a plain image classifier through `common.train` (used by the quickstart
and by any technique that needs an ordinary supervised model)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from common import data as data_lib
from common import sharding
from common import train as train_lib


def make_steps(
  model: nn.Module, tx: optax.GradientTransformation, *, mean, std, augment: bool = True
) -> tuple[Callable, Callable]:
  """Returns jitted (train_step, eval_step) for a Linen classifier `model(x, train=) -> (logits, aux)`."""

  def prep(x):
    return data_lib.normalize(jnp.asarray(x, jnp.float32), mean, std)

  @sharding.jit_step
  def train_step(state: train_lib.TrainState, batch: dict, rng: jax.Array):
    x = prep(batch["image"])
    if augment:
      x = data_lib.augment(rng, x, flip=False, pad=2)

    def loss_fn(params):
      (logits, _), new_vars = model.apply(
        {"params": params, "batch_stats": state.batch_stats}, x, train=True, mutable=["batch_stats"]
      )
      loss = train_lib.cross_entropy(logits, batch["label"])
      return loss, (logits, new_vars["batch_stats"])

    (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    state = train_lib.apply_gradients(state, grads, tx, batch_stats=batch_stats)
    return state, {"loss": loss, "accuracy": train_lib.accuracy(logits, batch["label"])}

  @jax.jit
  def eval_step(state: train_lib.TrainState, batch: dict):
    logits, _ = model.apply(
      {"params": state.params, "batch_stats": state.batch_stats}, prep(batch["image"]), train=False
    )
    m = batch["mask"]
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
    return {"loss": (ce * m).sum(), "accuracy": ((jnp.argmax(logits, -1) == batch["label"]) * m).sum()}

  return train_step, eval_step


def init_state(
  model: nn.Module, tx: optax.GradientTransformation, key: jax.Array, image_shape
) -> train_lib.TrainState:
  variables = model.init(key, jnp.zeros((1, *image_shape), jnp.float32), train=False)
  return train_lib.create_train_state(variables, tx)


def predict_fn(model: nn.Module, state: Any, *, mean, std) -> Callable[[jax.Array], jax.Array]:
  """A pure inference function on raw [0, 1] images (what gets exported)."""
  variables = {"params": state.params, "batch_stats": state.batch_stats}

  def predict(x_BHWC):
    return model.apply(variables, data_lib.normalize(x_BHWC, mean, std), train=False)[0]

  return predict
