"""The loss of the DQN's fitted Q-iteration: a masked squared error over the valid (state, action) outputs."""

from __future__ import annotations

import jax


def masked_q_error(pred: jax.Array, target: jax.Array, mask: jax.Array) -> jax.Array:
  """sum((pred - target)^2 * mask) / (rows * sum(mask)): the mean squared error over valid Q outputs.

  `mask` ([outputs], 1 where the token count can occur) is shared by every row of `pred` ([rows, outputs]).
  """
  return ((pred - target) ** 2 * mask).sum() / (pred.shape[0] * mask.sum())
