"""Small reference CNNs shared by the quickstart and by techniques that need a plain classifier."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import numpy as np

from common.batchnorm import BatchNorm


class SmallCNN(nn.Module):
  """Conv-BN-ReLU blocks with 2x2 average pooling, global pooling and a dense head.

  Attributes:
    widths: output channels of each block.
    num_classes: logits.
  """

  widths: Sequence[int] = (16, 32, 64)
  num_classes: int = 10

  @nn.compact
  def __call__(self, x_BHWC: jax.Array, *, train: bool) -> tuple[jax.Array, dict]:
    x = x_BHWC
    for i, w in enumerate(self.widths):
      x = nn.Conv(w, (3, 3), use_bias=False, name=f"conv{i}")(x)
      x = BatchNorm(use_running_average=not train, momentum=0.9, name=f"bn{i}")(x)
      x = nn.relu(x)
      x = nn.avg_pool(x, (2, 2), (2, 2))
    features = x.mean(axis=(1, 2))
    logits = nn.Dense(self.num_classes, name="head")(features)
    return logits, {"features": features}


def count_params(tree) -> int:
  """The number of parameters (array elements) in a pytree."""
  return int(sum(np.size(x) for x in jax.tree.leaves(tree)))
