"""AgileNN's explainability losses on importance maps I of shape (batch, h, w, channels).

The first `k` channels are the local (on-device) ones. Definitions follow the
original code (`train_agilenn.py`), as the digest states them:

  P[b, c]  = sum_{h, w} I[b, h, w, c]                       per-channel importance
  s_b      = sum_{c<k} P[b, c] / (sum_c P[b, c] + 1e-9)      skewness
  L_skew   = mean_b max(rho - s_b, 0)                       hinge at rho
  mins_b   = min_{h, w, c<k} I[b, h, w, c]                   element-wise, not per channel
  maxs_b   = max_{h, w, c>=k} I[b, h, w, c]
  L_dis    = mean_b max((maxs_b - mins_b) / sum_c P[b, c], 0)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

EPS = 1e-9


def channel_importance(importance: jax.Array) -> jax.Array:
  """P[b, c]: the importance map summed over space, (B, H, W, C) -> (B, C)."""
  return importance.sum(axis=(1, 2))


def skewness_per_example(importance: jax.Array, k: int) -> jax.Array:
  """s_b, the share of importance in the first k channels, shape (B,)."""
  p = channel_importance(importance)
  local = p[:, :k].sum(-1)
  return local / (p.sum(-1) + EPS)


def skewness(importance: jax.Array, k: int) -> jax.Array:
  """mean_b s_b (the "skewness" the original logs; ~0.83 on CIFAR-100 in its README)."""
  return skewness_per_example(importance, k).mean()


def skewness_loss(importance: jax.Array, k: int, rho: float | jax.Array) -> jax.Array:
  """mean_b max(rho - s_b, 0): zero once the local share reaches rho."""
  return jnp.maximum(rho - skewness_per_example(importance, k), 0.0).mean()


def disorder_loss(importance: jax.Array, k: int) -> jax.Array:
  """mean_b max((max remote element - min local element) / total importance, 0).

  The original has no epsilon in the denominator; an example whose importance is
  all zero (where the original would divide by zero) contributes 0 here instead
  of NaN. Everywhere else the value and gradient are the original's.
  """
  total = channel_importance(importance).sum(-1)
  mins = importance[..., :k].min(axis=(1, 2, 3))
  maxs = importance[..., k:].max(axis=(1, 2, 3))
  positive = total > 0
  ratio = (maxs - mins) / jnp.where(positive, total, 1.0)
  return jnp.where(positive, jnp.maximum(ratio, 0.0), 0.0).mean()


def total_loss(
  ce: jax.Array, importance: jax.Array, *, k: int, rho: float | jax.Array, lam: float | jax.Array
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """LAMBDA * CE + (1 - LAMBDA) * (L_skew + L_dis), with its parts."""
  l_skew = skewness_loss(importance, k, rho)
  l_dis = disorder_loss(importance, k)
  loss = lam * ce + (1.0 - lam) * (l_skew + l_dis)
  parts = {"ce": ce, "skew_loss": l_skew, "disorder_loss": l_dis, "skewness": skewness(importance, k)}
  return loss, parts
