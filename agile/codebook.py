"""The remote quantizer's codebook: data-driven centroid initialisation and a collapse guard.

AgileNN's centroids are c = 6 sigmoid(q) with q ~ N(0, 0.05^2), so all eight start within
about 0.1 of 3.0. With centroids that close, the soft assignment's derivative with respect
to a feature, d y_soft / d x = 2 Var_p(c) (p = softmax(-(x - c)^2)), is near zero, and
every centroid gets the same pull (d y_soft / d c_j ~ p_j ~ 1/C): the codebook cannot spread
by itself, and the cross-entropy cannot hold the remote features where the codebook
resolves them. Meanwhile the skewness and disorder losses lower the remote features' importance
|g * f| most cheaply by shrinking f. Over the original's 78k steps the centroids have time to
separate; over a short run the remote features sink below all but one centroid, every element
gets the same symbol, and the remote predictor sees a constant (the quick stage's seed 0:
symbol histogram [179, 0, 436940, 14, 7, 618, 1, 1], remote accuracy 0.45, combined 0.54).

`kmeans_logits` places the centroids where the initial model's remote features are (1-D
k-means, sklearn), which is what the original's comment asks of them ("fall in relu6 range
... the key to stable training") from the first step instead of after many thousand.
`health` is the guard: the symbols' empirical entropy against its bound log2(C).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from sklearn.cluster import KMeans

# A codebook is called collapsed when its symbols' entropy is below this share of log2(C).
# Quick stages with k-means centroids spend 0.81-0.94 bits per symbol of 3, the old initialisation's
# healthy 25-epoch run 0.37 (most remote features are 0 by design: that is the payload's
# compressibility); the collapsed seed spent 0.02 (docs/agile.md).
COLLAPSE_RATIO = 1 / 32
_EDGE = 1e-3  # centroids kept this far inside (0, 6), where the logit is finite


def symbol_counts(symbols: jax.Array, num_centroids: int, mask: jax.Array | None = None) -> jax.Array:
  """How often each symbol occurs, [C] float32 (the rows of a padded batch masked out by `mask`, [B])."""
  onehot = jax.nn.one_hot(symbols.reshape(symbols.shape[0], -1), num_centroids, dtype=jnp.float32)
  per_row = onehot.sum(axis=1)
  if mask is not None:
    per_row = per_row * mask[:, None]
  return per_row.sum(axis=0)


def entropy_bits(counts) -> jax.Array:
  """Empirical entropy in bits per symbol of a histogram (0 for an empty one)."""
  counts = jnp.asarray(counts, jnp.float32)
  p = counts / jnp.maximum(counts.sum(), 1.0)
  return jnp.maximum(-jnp.sum(jnp.where(p > 0, p * jnp.log2(jnp.where(p > 0, p, 1.0)), 0.0)), 0.0)  # not -0.0


def health(counts, num_centroids: int, *, ratio: float = COLLAPSE_RATIO) -> dict:
  """The codebook's usage from a symbol histogram: entropy (bits per symbol), its share of
  log2(C), the symbols used, and whether it collapsed (entropy below `ratio` * log2(C))."""
  counts = np.asarray(counts, np.float64)
  h = float(entropy_bits(counts))
  share = h / np.log2(num_centroids)
  return {
    "symbol_entropy_bits": h,
    "symbol_entropy_share": share,
    "symbols_used": int(np.sum(counts > 0)),
    "codebook_collapsed": bool(share < ratio),
  }


def collapse_message(entropy: float, num_centroids: int) -> str:
  return (
    f"the remote codebook collapsed: its symbols carry {entropy:.3f} bits of log2({num_centroids}) = "
    f"{np.log2(num_centroids):.0f}, so the remote predictor sees almost one symbol; check the centroids "
    "(train.centroid_init) and symbol_entropy_bits per step in metrics.jsonl"
  )


def kmeans_centroids(values: np.ndarray, num_centroids: int, *, seed: int) -> np.ndarray:
  """C sorted centroids in (0, 6) from 1-D k-means of `values` (duplicates merged by weight)."""
  v = np.clip(np.asarray(values, np.float64).ravel(), _EDGE, 6.0 - _EDGE)
  uniq, weight = np.unique(np.round(v, 3), return_counts=True)
  if len(uniq) < num_centroids:  # too few distinct values: fill the range evenly
    return (np.arange(num_centroids) + 0.5) * 6.0 / num_centroids
  km = KMeans(num_centroids, n_init=4, random_state=seed).fit(uniq[:, None], sample_weight=weight)
  return np.sort(np.clip(km.cluster_centers_.ravel(), _EDGE, 6.0 - _EDGE))


def logits_of(centroids: np.ndarray) -> np.ndarray:
  """q with 6 sigmoid(q) = centroids (the inverse of `models.centroids_from_logits`)."""
  c = np.clip(np.asarray(centroids, np.float64), _EDGE, 6.0 - _EDGE) / 6.0
  return np.log(c / (1.0 - c)).astype(np.float32)
