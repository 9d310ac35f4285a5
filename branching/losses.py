"""The training loss of the original and the stretched nets (pycls: softmax cross-entropy)."""

from __future__ import annotations

import jax

from branching.models import AnyNet
from common import train as train_lib


def classification_loss(model: AnyNet, params, batch_stats, x: jax.Array, labels: jax.Array):
  """Mean cross-entropy of the net in training mode; (loss, (logits, updated batch statistics))."""
  (logits, _), new = model.apply(
    {"params": params, "batch_stats": batch_stats}, x, train=True, mutable=["batch_stats"]
  )
  return train_lib.cross_entropy(logits, labels), (logits, new["batch_stats"])
