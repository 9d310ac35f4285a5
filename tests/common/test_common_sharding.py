"""Data parallelism over 8 simulated CPU devices equals the single-device step."""

import os
import subprocess
import sys
import textwrap

from tests.conftest import REPO_ROOT

SCRIPT = textwrap.dedent(
  """
  import jax, numpy as np, optax
  from common import classifier, data, models, sharding
  assert jax.device_count() == 8, jax.devices()
  train_ds, _ = data.load("digits")
  mean, std = data.channel_stats(train_ds)
  model = models.SmallCNN(widths=(8, 16))
  tx = optax.sgd(0.1, momentum=0.9)
  state = classifier.init_state(model, tx, jax.random.key(0), train_ds.image_shape)
  step, _ = classifier.make_steps(model, tx, mean=mean, std=std, augment=True)
  raw_step = step.__wrapped__
  batch = next(data.batches(train_ds, 64, key=jax.random.key(3)))
  rng = jax.random.key(4)
  single = jax.jit(raw_step)(state, batch, rng)
  mesh = sharding.make_mesh()
  dp = sharding.data_parallel(raw_step, mesh, donate_state=False)
  out = dp(sharding.replicate(state, mesh), sharding.shard_batch(batch, mesh), rng)
  assert len(out[0].params["conv0"]["kernel"].sharding.device_set) == 8
  err = max(float(np.max(np.abs(a - b))) for a, b in zip(jax.tree.leaves(single), jax.tree.leaves(out)))
  print("MAXERR", err)
  assert err <= 1e-5, err
  try:
    sharding.shard_batch({"x": np.zeros((12, 2))}, mesh)
  except Exception as e:
    assert "multiple of 8" in str(e), e
  else:
    raise AssertionError("uneven batch accepted")
  """
)


def test_data_parallel_step_equals_single_device():
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
  res = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO_ROOT, env=env, capture_output=True, text=True)
  assert res.returncode == 0, res.stderr[-3000:]
  assert "MAXERR" in res.stdout
