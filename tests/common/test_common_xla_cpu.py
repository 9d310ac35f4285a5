"""common.xla_cpu: the launchers' XLA:CPU options are added once, respect the user's, and keep results."""

import jax
import jax.numpy as jnp
import numpy as np

from common import xla_cpu


def test_set_cpu_flags_adds_once_and_keeps_the_users_value():
  env = {}
  xla_cpu.set_cpu_flags(env)
  assert env["XLA_FLAGS"] == "--xla_cpu_experimental_ynn_fusion_type="
  xla_cpu.set_cpu_flags(env)
  assert env["XLA_FLAGS"] == "--xla_cpu_experimental_ynn_fusion_type="
  mine = "--xla_force_host_platform_device_count=8 --xla_cpu_experimental_ynn_fusion_type=dot"
  env = {"XLA_FLAGS": mine}
  xla_cpu.set_cpu_flags(env)
  assert env["XLA_FLAGS"] == mine
  env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
  xla_cpu.set_cpu_flags(env)
  assert env["XLA_FLAGS"] == "--xla_force_host_platform_device_count=8 " + xla_cpu.flags_text()


def test_cpu_options_give_the_default_results():
  """A conv, its filter gradient, a matmul and a training BatchNorm's reductions over batch and
  space (forward and backward) compiled with CPU_OPTIONS equal XLA's defaults."""

  def f(x, k, w):
    y = jax.lax.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    mean = y.mean(axis=(0, 1, 2))
    var = jnp.mean(jnp.square(y), axis=(0, 1, 2)) - jnp.square(mean)
    y = (y - mean) * jax.lax.rsqrt(var + 1e-3)
    return jnp.sum(jnp.tanh(y @ w))

  args = [
    jax.random.normal(jax.random.key(i), s) for i, s in enumerate([(4, 8, 8, 6), (3, 3, 6, 16), (16, 32)])
  ]
  g = jax.jit(jax.value_and_grad(f, argnums=(1, 2)))
  default = g.lower(*args).compile()(*args)
  for options in (xla_cpu.CPU_OPTIONS, xla_cpu.REDUCE_OPTIONS):
    ours = g.lower(*args).compile(options)(*args)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4), ours, default)
