"""Per-subnetwork batch-norm statistics (the slimmable-network fix for thin prefixes).

REDS shares one set of BN statistics between all subnetworks and prefix-slices
it. A layer that reads fewer input channels produces outputs with another mean
and variance, so the dense statistics no longer fit a thin prefix (the 25 %
subnetwork of the quick config is near chance right after slicing). With
`finetune.bn_stats = "per_subnet"` every subnetwork gets its own statistics,
measured after fine-tuning on training batches ("precise BN": the average of
the batch means and variances, BN scale and bias still shared). The extra
memory is two numbers per channel per subnetwork; an exported subnetwork folds
its own statistics into its weights, so nothing changes at run time.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from common import data as data_lib
from subnets import models, surgery

BN_STATS = ("shared", "per_subnet")


@functools.lru_cache(maxsize=64)
def _stats_fn(sub_cfg: models.ModelConfig, mean: tuple, std: tuple):
  net = models.RedsNet(sub_cfg)

  @jax.jit
  def batch_stats(params, zeros, x_raw):
    # From zero running statistics one train-mode update leaves (1 - momentum) * batch statistic.
    x = data_lib.normalize(x_raw, np.asarray(mean), np.asarray(std))
    _, upd = net.apply({"params": params, "batch_stats": zeros}, x, train=True, mutable=["batch_stats"])
    return jax.tree_util.tree_map(lambda a: a / (1.0 - models.BN_MOMENTUM), upd["batch_stats"])

  return batch_stats


def recalibrate(
  mcfg: models.ModelConfig,
  variables: dict,
  widths_list: Sequence[Sequence[int]],
  ds: data_lib.Dataset,
  *,
  mean,
  std,
  batch_size: int,
  num_batches: int,
  key: jax.Array,
) -> list[dict]:
  """Batch statistics of every subnetwork: averages over `num_batches` training batches (no augmentation).

  Returns one `batch_stats` tree per subnetwork, shaped like the sliced subnetwork's.
  """
  out = []
  mean_t, std_t = tuple(np.asarray(mean, np.float64).ravel()), tuple(np.asarray(std, np.float64).ravel())
  bs = min(batch_size, len(ds))
  for ws in widths_list:
    sub_cfg = mcfg.with_widths(ws)
    sub = surgery.slice_variables(variables, mcfg, ws)
    zeros = jax.tree_util.tree_map(jnp.zeros_like, sub["batch_stats"])
    fn = _stats_fn(sub_cfg, mean_t, std_t)
    total, n, epoch = None, 0, 0
    while n < num_batches:
      for batch in data_lib.batches(ds, bs, key=jax.random.fold_in(key, epoch)):
        s = fn(sub["params"], zeros, jnp.asarray(batch["image"], jnp.float32))
        total = s if total is None else jax.tree_util.tree_map(jnp.add, total, s)
        n += 1
        if n >= num_batches:
          break
      epoch += 1
    out.append(jax.tree_util.tree_map(lambda a: a / n, total))  # noqa: B023
  return out


def with_stats(variables: dict, mcfg: models.ModelConfig, widths, stats: dict | None) -> dict:
  """The sliced variables of one subnetwork, with its own statistics when given."""
  sub = surgery.slice_variables(variables, mcfg, widths)
  return sub if stats is None else {"params": sub["params"], "batch_stats": stats}


def evaluate(mcfg, variables, widths_list, stats_list, test_ds, *, mean, std) -> list[float]:
  """Test accuracy of each subnetwork with its own statistics (BN in inference mode)."""
  accs = []
  for ws, st in zip(widths_list, stats_list, strict=True):
    net = models.RedsNet(mcfg.with_widths(ws))
    sub = with_stats(variables, mcfg, ws, st)
    fn = jax.jit(lambda v, x: jnp.argmax(net.apply(v, x, train=False)[0], -1))  # noqa: B023
    correct = 0
    for batch in data_lib.batches(test_ds, 256, drop_last=False):
      x = data_lib.normalize(jnp.asarray(batch["image"], jnp.float32), mean, std)
      pred = np.asarray(fn(sub, x))
      correct += int(((pred == np.asarray(batch["label"])) * np.asarray(batch["mask"])).sum())
    accs.append(correct / len(test_ds))
  return accs
