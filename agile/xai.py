"""Integrated gradients with a zero baseline, and the importance-based channel remapping.

The original computes IG with the trapezoid rule over one interval (alpha in
{0, 1}): I = |0.5 (g(0) + g(f)) * (f - 0)|, with g the gradient of the frozen
evaluator's true-class cross-entropy. `steps` points generalise it to the
trapezoid rule over steps - 1 intervals. Training differentiates I with respect
to the feature extractor, so `jax.grad` here sits inside an outer `jax.grad`.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np


def trapezoid_weights(steps: int) -> tuple[np.ndarray, np.ndarray]:
  """(alphas, weights) of the trapezoid rule on [0, 1] with `steps` >= 2 points."""
  if steps < 2:
    raise ValueError(f"integrated gradients needs steps >= 2, got {steps}")
  alphas = np.linspace(0.0, 1.0, steps)
  weights = np.full(steps, 1.0 / (steps - 1))
  weights[[0, -1]] *= 0.5
  return alphas, weights


def integrated_gradients(
  loss_fn: Callable[[jax.Array], jax.Array],
  features: jax.Array,
  steps: int = 2,
  baseline_grad: jax.Array | None = None,
  *,
  remat: bool = False,
) -> jax.Array:
  """|(f - 0) * sum_i w_i grad loss(alpha_i f)|, element-wise, the shape of `features`.

  Args:
    loss_fn: scalar function of the features (e.g. the evaluator's mean CE of
      the true labels, labels closed over).
    features: f, e.g. (B, H, W, C).
    steps: trapezoid points on alpha in [0, 1] (2 = the original's two endpoints).
    baseline_grad: grad loss(0), when the caller has it (`reference.BaselineGradients`
      looks it up by label); computed here otherwise.
    remat: each gradient under `jax.checkpoint`: a gradient taken of the result (the XAI
      loss's grad-of-grad) recomputes the evaluator's forward and backward passes instead of
      keeping their residuals (less memory, more time: `python -m launch.bench agile`).

  The baseline point (alpha = 0) does not depend on f, so its gradient is taken
  under `stop_gradient`: the same value, without a useless second-order pass.
  """
  alphas, weights = trapezoid_weights(steps)
  grad_fn = jax.checkpoint(jax.grad(loss_fn)) if remat else jax.grad(loss_fn)
  if baseline_grad is None:
    baseline_grad = grad_fn(jnp.zeros_like(features))
  total = weights[0] * jax.lax.stop_gradient(baseline_grad)
  for a, w in zip(alphas[1:], weights[1:], strict=True):
    total = total + w * grad_fn(a * features)
  return jnp.abs(total * features)


def channel_scores(importance: jax.Array, k: int, method: str) -> jax.Array:
  """Per-channel scores of one batch for remapping, shape (C,).

  "global_importance": the batch mean of P[b, c]. "topk_appearance": the share of
  examples in which channel c is among that example's k most important channels,
  keeping channel identity (the original sorted the values, lost which channel
  was which, and indexed the batch row k instead of the k-th column).
  """
  p = importance.sum(axis=(1, 2))
  if method == "global_importance":
    return p.mean(0)
  if method == "topk_appearance":
    kth = jnp.sort(p, axis=-1)[:, ::-1][:, k - 1]
    return (p >= kth[:, None]).astype(jnp.float32).mean(0)
  raise ValueError(f"channel remapping {method!r}: must be 'global_importance' or 'topk_appearance'")


def remap_feature_channels(variables: dict, mapping: np.ndarray) -> dict:
  """Permutes the feature extractor's output channels: new channel i = old channel mapping[i].

  Permutes the output columns of the second pointwise kernel *and* the second
  BatchNorm's scale, bias and running statistics (the original permuted only the
  kernel, which is right only while BN is at its initial values).
  """
  mapping = np.asarray(mapping)
  params = jax.tree.map(lambda x: x, variables["params"])
  stats = jax.tree.map(lambda x: x, variables.get("batch_stats", {}))
  fe = dict(params["fe"])
  sep2 = dict(fe["sep2"])
  pw = dict(sep2["pw"])
  pw["kernel"] = pw["kernel"][..., mapping]
  sep2["pw"] = pw
  fe["sep2"] = sep2
  fe["bn2"] = {n: v[mapping] for n, v in fe["bn2"].items()}
  params = {**params, "fe": fe}
  out = {**variables, "params": params}
  if stats:
    fe_stats = dict(stats["fe"])
    fe_stats["bn2"] = {n: v[mapping] for n, v in fe_stats["bn2"].items()}
    out["batch_stats"] = {**stats, "fe": fe_stats}
  return out
