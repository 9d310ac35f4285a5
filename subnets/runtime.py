"""Switching between precompiled subnetworks in-process.

A subnetwork is a width vector. `SubnetRuntime` slices the dense variables once
per subnetwork, compiles one inference function per subnetwork ahead of time
(`jax.jit(...).lower(...).compile()`), and switches by index: a switch is a
list lookup, no tracing, no compilation, no weight copy.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from common import data as data_lib
from subnets import bnstats, models


def predict_fn(mcfg: models.ModelConfig, *, mean, std):
  """(variables, raw images) -> logits for the model of `mcfg` (normalisation inside).

  Inference and export use the grouped depthwise form (TFLite DEPTHWISE_CONV_2D).
  """
  net = models.RedsNet(dataclasses.replace(mcfg, shifted_depthwise=False))

  def predict(variables, x_BHWC):
    return net.apply(variables, data_lib.normalize(x_BHWC, mean, std), train=False)[0]

  return predict


class SubnetRuntime:
  """One compiled function per subnetwork; `switch(i)` selects one, `__call__` runs it."""

  def __init__(self, mcfg: models.ModelConfig, variables: dict, widths_list: Sequence[Sequence[int]],
               example: np.ndarray, *, mean, std, stats_list: Sequence[dict] | None = None):  # fmt: skip
    """stats_list: each subnetwork's own BN statistics (`subnets.bnstats`), if it has them."""
    self.widths = [tuple(int(w) for w in ws) for ws in widths_list]
    self._vars, self._fns = [], []
    x = jnp.asarray(example)
    for k, ws in enumerate(self.widths):
      sub_cfg = mcfg.with_widths(ws)
      v = jax.device_put(
        bnstats.with_stats(variables, mcfg, ws, None if stats_list is None else stats_list[k])
      )
      self._vars.append(v)
      self._fns.append(jax.jit(predict_fn(sub_cfg, mean=mean, std=std)).lower(v, x).compile())
    self.index = len(self.widths) - 1
    self._fn, self._v = self._fns[self.index], self._vars[self.index]

  def switch(self, index: int) -> None:
    """Makes subnetwork `index` the active one."""
    self._fn, self._v = self._fns[index], self._vars[index]
    self.index = index

  def __call__(self, x: jax.Array) -> jax.Array:
    return self._fn(self._v, x)
