"""The losses of REDS' joint fine-tuning: sum_k pi_k CE_k over the nested subnetworks, and the pi_k."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from common import train as train_lib
from subnets import models

LOSS_WEIGHTS = ("sqrt_params", "equal")


def loss_weights(
  mcfg: models.ModelConfig, widths_list: Sequence[Sequence[int]], image_shape, kind: str = "sqrt_params"
) -> np.ndarray:
  """pi_k = sqrt(p_k) / sum_j sqrt(p_j), p_k the non-BN parameter fraction of subnetwork k ("sqrt_params",
  the original's); or 1 / K each ("equal")."""
  if kind == "equal":
    return np.full(len(widths_list), 1.0 / len(widths_list))
  dense = models.param_count(mcfg, image_shape, include_bn=False)
  p = np.asarray(
    [models.param_count(mcfg.with_widths(w), image_shape, include_bn=False) / dense for w in widths_list]
  )
  return np.sqrt(p) / np.sqrt(p).sum()


def joint_loss(logits_list: Sequence[jax.Array], labels: jax.Array, pis) -> tuple[jax.Array, jax.Array]:
  """(sum_k pi_k CE_k, the per-subnetwork CE_k) for the logits of every subnetwork on one batch."""
  losses = jnp.stack([train_lib.cross_entropy(lg, labels) for lg in logits_list])
  return jnp.sum(jnp.asarray(pis, jnp.float32) * losses), losses
