"""Unit-level operations on model variables: slice, permute, zero, score.

Every function reads the axis tags of `models.unit_axes(cfg)`: each tagged axis
belongs to one prunable layer, either as the unit's own axis ("out": the
filter, its BN, the depthwise channel that carries it) or as a consumer's input
axis ("in": the next pointwise/dense layer's rows).

* `slice_variables(v, cfg, widths)` -> the variables of `cfg.with_widths(widths)`
  (channel prefixes; differentiable, so joint training goes through it).
* `permute_variables(v, cfg, perms)` reorders units along every tagged axis;
  the network computes exactly the same function (no BN or flatten left behind,
  unlike the original DS-CNN and CNN code).
* `zero_dropped(v, cfg, widths)` keeps the dense shapes but zeroes every
  consumer input of a dropped unit: the dense network then equals the sliced one.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from subnets.models import IN, OUT, ModelConfig, unit_axes


def _map_tagged(variables: dict, cfg: ModelConfig, fn) -> dict:
  tags = unit_axes(cfg)
  flat = traverse_util.flatten_dict(variables, keep_empty_nodes=True)
  out = {}
  for path, arr in flat.items():
    t = tags.get(tuple(path))
    out[path] = arr if t is None or not hasattr(arr, "shape") else fn(arr, t)
  return traverse_util.unflatten_dict(out)


def slice_variables(variables: dict, cfg: ModelConfig, widths: Sequence[int]) -> dict:
  """Dense variables -> the subnetwork's variables (prefix of each tagged axis)."""
  widths = [int(w) for w in widths]

  def fn(arr, tag):
    idx = tuple(slice(None) if t is None else slice(0, widths[t[0]]) for t in tag)
    return arr[idx]

  return _map_tagged(variables, cfg, fn)


def permute_variables(variables: dict, cfg: ModelConfig, perms: Sequence[np.ndarray]) -> dict:
  """Reorders the units of every layer: new unit j = old unit perms[l][j]."""
  perms = [jnp.asarray(p) for p in perms]

  def fn(arr, tag):
    for axis, t in enumerate(tag):
      if t is not None:
        arr = jnp.take(arr, perms[t[0]], axis=axis)
    return arr

  return _map_tagged(variables, cfg, fn)


def zero_dropped(variables: dict, cfg: ModelConfig, widths: Sequence[int]) -> dict:
  """Dense-shaped variables whose consumers ignore units beyond `widths`."""

  def fn(arr, tag):
    for axis, t in enumerate(tag):
      if t is not None and t[1] == IN:
        keep = jnp.arange(arr.shape[axis]) < widths[t[0]]
        shape = [1] * arr.ndim
        shape[axis] = arr.shape[axis]
        arr = arr * keep.reshape(shape).astype(arr.dtype)
    return arr

  return _map_tagged(variables, cfg, fn)


def unit_reduce(values: dict, cfg: ModelConfig) -> list[np.ndarray]:
  """Sums an elementwise score tree (shaped like params) per unit of each layer.

  Only kernels count (the digest's scores: a unit's fan-in weights, and for
  DS-CNN also the depthwise channel that carries it); BN and biases do not.
  """
  tags = unit_axes(cfg)
  flat = traverse_util.flatten_dict({"params": values})
  scores = [np.zeros(w, np.float64) for w in cfg.widths]
  for path, tag in tags.items():
    if path[0] != "params" or path[-1] != "kernel":
      continue
    arr = np.asarray(flat[path], np.float64)
    for axis, t in enumerate(tag):
      if t is not None and t[1] == OUT:
        other = tuple(a for a in range(arr.ndim) if a != axis)
        scores[t[0]] += arr.sum(axis=other)
  return scores


def taylor_scores(params: dict, grads_sum: dict, cfg: ModelConfig) -> list[np.ndarray]:
  """|W * G| per unit, G the gradient summed over the importance batches."""
  prod = jax.tree_util.tree_map(lambda w, g: jnp.abs(w * g), params, grads_sum)
  return unit_reduce(prod, cfg)


def magnitude_scores(params: dict, cfg: ModelConfig) -> list[np.ndarray]:
  """||W||_1 per unit (the "Magnitude" ablation)."""
  return unit_reduce(jax.tree_util.tree_map(jnp.abs, params), cfg)


def random_scores(cfg: ModelConfig, key: jax.Array) -> list[np.ndarray]:
  """Uniform random per unit (the "Random" ablation)."""
  keys = jax.random.split(key, len(cfg.widths))
  return [np.asarray(jax.random.uniform(k, (w,)), np.float64) for k, w in zip(keys, cfg.widths, strict=True)]


def sort_permutations(scores: Sequence[np.ndarray]) -> list[np.ndarray]:
  """Per layer, unit indices by descending score (stable)."""
  return [np.argsort(-np.asarray(s), kind="stable") for s in scores]


def sorted_scores(scores: Sequence[np.ndarray]) -> list[np.ndarray]:
  return [np.asarray(s)[p] for s, p in zip(scores, sort_permutations(scores), strict=True)]
