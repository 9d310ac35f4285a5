"""Per-subnetwork BN statistics: exact batch moments, own statistics per width, batch-mode joint step."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from common import data as data_lib
from common import train as ct
from subnets import bnstats, losses, models, surgery
from subnets import train as train_lib

CFG = models.ModelConfig(widths=(4, 6, 5), dw_strides=(1, 2), num_classes=3)
SHAPE = (6, 6, 3)


def _ds(n=32, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.uniform(size=(n, *SHAPE)).astype(np.float32)
  return data_lib.Dataset(x, rng.integers(0, 3, n).astype(np.int32), 3, "toy")


def _conv0_moments(v, cfg, x):
  """NumPy: mean and (biased) variance over (N, H, W) of the first convolution's output."""
  k = np.asarray(v["params"]["conv0"]["kernel"])
  y = np.asarray(
    jax.lax.conv_general_dilated(
      jnp.asarray(x), jnp.asarray(k), cfg.first_stride, "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
  )
  return y.mean(axis=(0, 1, 2)), y.var(axis=(0, 1, 2))


def test_recalibrate_gives_the_batch_moments_of_each_subnetwork():
  ds = _ds()
  v = models.init_variables(CFG, jax.random.key(0), SHAPE)
  widths = [(2, 3, 5), CFG.widths]
  # one batch holding the whole data set: the statistics are its exact moments
  stats = bnstats.recalibrate(
    CFG, v, widths, ds, mean=0.0, std=1.0, batch_size=len(ds), num_batches=1, key=jax.random.key(1)
  )
  for ws, st in zip(widths, stats, strict=True):
    sub = surgery.slice_variables(v, CFG, ws)
    m, var = _conv0_moments(sub, CFG.with_widths(ws), ds.images)
    np.testing.assert_allclose(st["bn0"]["mean"], m, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(st["bn0"]["var"], var, rtol=1e-4, atol=1e-6)
    assert jax.tree_util.tree_map(jnp.shape, st) == jax.tree_util.tree_map(jnp.shape, sub["batch_stats"])
  # A layer that reads a thinner input has other statistics than the dense ones sliced.
  dense_sliced = surgery.slice_variables({"batch_stats": stats[1]}, CFG, widths[0])["batch_stats"]
  assert not np.allclose(stats[0]["pwbn1"]["mean"], dense_sliced["pwbn1"]["mean"], atol=1e-4)


def test_evaluate_with_own_statistics_matches_the_model():
  ds = _ds(20, seed=3)
  v = models.init_variables(CFG, jax.random.key(2), SHAPE)
  ws = (2, 3, 5)
  stats = bnstats.recalibrate(CFG, v, [ws], ds, mean=0.0, std=1.0, batch_size=10, num_batches=2,
                              key=jax.random.key(0))  # fmt: skip
  sub = bnstats.with_stats(v, CFG, ws, stats[0])
  logits = models.RedsNet(CFG.with_widths(ws)).apply(sub, jnp.asarray(ds.images), train=False)[0]
  ref = float(np.mean(np.argmax(np.asarray(logits), -1) == ds.labels))
  assert bnstats.evaluate(CFG, v, [ws], stats, ds, mean=0.0, std=1.0) == [ref]
  same = jax.tree_util.tree_map(
    np.array_equal, bnstats.with_stats(v, CFG, ws, None), surgery.slice_variables(v, CFG, ws)
  )
  assert all(jax.tree_util.tree_leaves(same))


def test_joint_step_with_batch_statistics_normalises_per_batch_and_keeps_stored_stats():
  v = models.init_variables(CFG, jax.random.key(0), SHAPE)
  ws = [(2, 3, 5), CFG.widths]
  rng = np.random.default_rng(0)
  batch = {"image": rng.uniform(size=(8, *SHAPE)).astype(np.float32) * 5 + 3,
           "label": rng.integers(0, 3, 8).astype(np.int32)}  # fmt: skip
  out = {}
  for bn_batch in (False, True):
    tx = optax.sgd(0.0)
    step, _ = train_lib.make_joint_steps(
      CFG, ws, tx, mean=0.0, std=1.0, pis=np.array([0.5, 0.5]), augment=False, bn_batch=bn_batch
    )
    state = ct.create_train_state(jax.tree_util.tree_map(jnp.array, v), tx)
    state, m = step(state, batch, jax.random.key(0))
    out[bn_batch] = float(m["loss"])
    for a, b in zip(
      jax.tree_util.tree_leaves(state.batch_stats), jax.tree_util.tree_leaves(v["batch_stats"]), strict=True
    ):
      np.testing.assert_array_equal(a, b)
  # inputs far from the stored statistics: batch normalisation gives another loss than the stored moments
  assert abs(out[True] - out[False]) > 1e-3


def test_equal_loss_weights():
  np.testing.assert_allclose(losses.loss_weights(CFG, [(1, 1, 1), CFG.widths], SHAPE, "equal"), [0.5, 0.5])
