"""Data parallelism: every technique's training step on 8 simulated CPU devices equals the step
on one device (within float reassociation), with the state replicated (offload: its rows split)
and the batch split on axis 0; an uneven batch is a ConfigError naming both numbers."""

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT

SCRIPT = os.path.join(os.path.dirname(__file__), "dp_steps.py")


@pytest.mark.parametrize("name", ["common", "agile", "coinfer", "subnets", "branching", "offload", "uneven"])
def test_step_on_8_devices_equals_one_device(name):
  env = {
    **os.environ,
    "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
    "JAX_PLATFORMS": "cpu",
    "PYTHONPATH": str(REPO_ROOT),
  }
  res = subprocess.run(
    [sys.executable, SCRIPT, name], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900
  )
  assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
  assert f"RESULT {name}" in res.stdout and "ALL OK" in res.stdout


@pytest.mark.parametrize(
  ("flags", "message"),
  [
    (["--coordinator", "127.0.0.1:1"], "--coordinator: only with --multihost"),
    (["--multihost", "--coordinator", "127.0.0.1:1"], "go together"),
    (
      ["--multihost", "--coordinator", "127.0.0.1:1", "--num_processes", "2", "--process_id", "2"],
      "--process_id 2",
    ),
  ],
)
def test_multihost_flags_are_checked(flags, message):
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO_ROOT)}
  cmd = [sys.executable, "-m", "launch.train", "agile", *flags, "--", "--help"]
  res = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
  assert res.returncode == 2, res.stderr[-2000:]
  assert message in res.stderr and "Traceback" not in res.stderr, res.stderr[-2000:]


def test_step_lowers_before_its_first_call_on_one_device():
  """`jit_step(f).lower(...)` works before any call (the benchmarks compile steps with their own
  XLA options) and the compiled step gives the called step's result."""
  import jax.numpy as jnp
  import numpy as np

  from common import sharding

  def f(state, batch):
    return state + batch.sum(), batch * 2

  step = sharding.jit_step(f)
  args = (jnp.float32(1.0), jnp.arange(4.0))
  compiled = step.lower(*args).compile()
  got = compiled(jnp.float32(1.0), jnp.arange(4.0))
  want = sharding.jit_step(f)(*args)
  np.testing.assert_array_equal(got[0], want[0])
  np.testing.assert_array_equal(got[1], want[1])
