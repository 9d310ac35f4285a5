"""Split model: per-setup BN statistics stay separate, masking equals slicing, one trace per step."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from coinfer import models as models_lib
from coinfer import train as T
from common import app
from common import data as data_lib


@pytest.fixture(scope="module")
def ctx():
  return T.build(app.load_config_file("coinfer/configs/quick.py:tiny"))


def test_step_updates_only_its_setup_stats_and_traces_once(ctx):
  tx = T.make_tx(ctx.config, 10, 1e-3)
  state = T.init_state(ctx, tx, jax.random.key(0))
  before = jax.tree.map(np.asarray, state.batch_stats)
  ids = jnp.asarray([3], jnp.int32)

  @chex.assert_max_traces(n=1)  # runs once per trace of the step: a second trace fails the test
  def pick(rng):
    return ids

  step = T.make_train_step(ctx, tx, pick)
  batch = next(iter(data_lib.batches(ctx.train_ds, 16)))
  state, m = step(state, batch, jax.random.key(1))
  state, m = step(state, batch, jax.random.key(2))
  assert np.isfinite(float(m["loss"]))
  after = jax.tree.map(np.asarray, state.batch_stats)
  for b, a in zip(jax.tree.leaves(before), jax.tree.leaves(after), strict=True):
    assert not np.allclose(b[3], a[3])
    others = [i for i in range(b.shape[0]) if i != 3]
    np.testing.assert_array_equal(b[others], a[others])


def test_switching_is_choosing_an_index(ctx):
  tx = T.make_tx(ctx.config, 10, 1e-3)
  state = T.init_state(ctx, tx, jax.random.key(0))
  stats = jax.tree.map(
    lambda a: a + jnp.arange(a.shape[0]).reshape(-1, *([1] * (a.ndim - 1))) * 0.1, state.batch_stats
  )
  x = jnp.asarray(ctx.test_ds.images[:4])
  outs = []
  for i in (0, 5):
    v = {"params": state.params, "batch_stats": models_lib.select_stats(stats, i)}
    outs.append(np.asarray(ctx.model.apply(v, x, 4, 8, train=False)[0]))
  assert not np.allclose(outs[0], outs[1])  # same weights, different statistics


def test_mask_equals_sliced_decoder_weights(ctx):
  from coinfer import export as ex

  tx = T.make_tx(ctx.config, 10, 1e-3)
  state = T.init_state(ctx, tx, jax.random.key(0))
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  x = ctx.test_ds.images[:5]
  for idx in (0, 4, 8):
    device_fn, server_fn, full_fn = ex.split_fns(ctx, variables, idx)
    z = device_fn(x)
    assert z.shape[-1] == ctx.setups[idx].channels
    np.testing.assert_allclose(np.asarray(server_fn(z)), np.asarray(full_fn(x)), atol=1e-4)


def test_search_eps_hits_cluster_count():
  values = np.asarray([0.0, 0.1, 0.15, 1.0, 1.05, 3.0, 3.2, 3.3])
  for k in (1, 2, 3, 4):
    eps, labels = T.search_eps(values, k)
    assert len(set(labels)) == k
  from common.errors import InfeasibleError

  with pytest.raises(InfeasibleError):
    T.search_eps(np.asarray([1.0, 1.0, 2.0]), 3)


def test_clio_starts_from_the_init_model_except_its_new_first_conv(ctx):
  import optax
  from flax.traverse_util import flatten_dict

  from coinfer import baselines

  st = T.init_state(ctx, optax.sgd(0.1), jax.random.key(1))
  teacher = {"params": st.params, "batch_stats": models_lib.select_stats(st.batch_stats, ctx.teacher_id)}
  clio = models_lib.ClioNet(ctx.model.config, widths=(1, 4))
  fresh = clio.init(jax.random.key(2), jnp.zeros((1, *ctx.train_ds.image_shape)), train=False)
  out = baselines.clio_from_teacher(fresh, teacher)
  tp, op, fp = (flatten_dict(v["params"]) for v in (teacher, out, fresh))
  np.testing.assert_array_equal(op[("stem", "kernel")], tp[("device", "stem", "kernel")])
  for i in (0, 1):
    np.testing.assert_array_equal(op[(f"servers_{i}", "head", "kernel")], tp[("server", "head", "kernel")])
    # the w -> 32 first conv is new (the teacher's takes 32 channels): it keeps its fresh init
    np.testing.assert_array_equal(
      op[(f"servers_{i}", "decoder", "kernel")], fp[(f"servers_{i}", "decoder", "kernel")]
    )
    np.testing.assert_array_equal(op[(f"slice_bn_{i}", "scale")], fp[(f"slice_bn_{i}", "scale")])
  ts, os_ = flatten_dict(teacher["batch_stats"]), flatten_dict(out["batch_stats"])
  np.testing.assert_array_equal(
    os_[("servers_1", "decoder_bn", "mean")], ts[("server", "decoder_bn", "mean")]
  )
  for path, leaf in op.items():  # every other server weight is the teacher's
    if path[0].startswith("servers_") and path[1] != "decoder":
      np.testing.assert_array_equal(leaf, tp[("server", *path[1:])])


def test_int8_device_part_runs_under_tflite_micro(ctx, tmp_path):
  from coinfer import export as ex
  from common import micro

  tx = T.make_tx(ctx.config, 10, 1e-3)
  state = T.init_state(ctx, tx, jax.random.key(0))
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  idx = 4
  r = ex.export_setup(ctx, variables, idx, tmp_path, int8=True, parity_images=16, ram_bytes=32 * 1024)
  assert "int8_error" not in r, r
  t8 = (tmp_path / ctx.setups[idx].name / "device_int8.tflite").read_bytes()
  arena = r["device_int8_micro_arena_bytes"]
  assert r["device_int8_micro_fits"] and r["device_int8_micro_images"] == 16
  assert micro.loads(t8, arena) and not micro.loads(t8, arena - micro.ARENA_STEP)
  assert "CONV_2D" in r["device_int8_micro_ops"]
