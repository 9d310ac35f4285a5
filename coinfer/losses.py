"""The losses of RTCoInfer's training: hard labels (common.train.cross_entropy) and the teacher's soft ones."""

from __future__ import annotations

import jax


def soft_cross_entropy(*, logits: jax.Array, targets: jax.Array) -> jax.Array:
  """mean_batch(-sum_k p_k log_softmax(logits)_k), the reference's CrossEntropyLossSoft."""
  return -(targets * jax.nn.log_softmax(logits)).sum(-1).mean()
