"""common.profile: per-op FLOPs from the optimized HLO and per-op times from a profiler trace."""

import jax
import jax.numpy as jnp

from common import profile


def test_breakdown_counts_conv_flops_and_names_passes():
  def f(k, x):
    y = jax.lax.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return jnp.sum(jnp.tanh(y))

  x = jnp.ones((2, 8, 8, 4))
  k = jnp.ones((3, 3, 4, 8))
  g = jax.jit(jax.grad(f))
  compiled = g.lower(k, x).compile()
  rows = profile.op_breakdown(compiled, lambda: jax.block_until_ready(compiled(k, x)))
  assert rows and all(r["seconds"] >= 0 for r in rows)
  fwd = 2 * (2 * 8 * 8 * 8) * (3 * 3 * 4)  # 2 x outputs x (kernel taps x input channels)
  total = sum(r["flops"] for r in rows)
  assert total == 2 * fwd  # the forward conv and the filter-gradient conv, same multiply-adds
  assert any(r["direction"].endswith(": forward") and r["flops"] == fwd for r in rows)
  groups = profile.group_rows(rows)
  assert abs(sum(gr["share"] for gr in groups) - 1.0) < 1e-9


def test_direction_names_the_module_and_pass():
  assert profile.direction("jit(step)/jvp(AgileNN)/fe/conv") == "AgileNN: forward"
  assert profile.direction("jit(step)/transpose(jvp(AgileNN))/fe/conv") == "AgileNN: backward"
  name = "jit(step)/transpose(jvp(transpose(jvp(ReferenceBody))))/block0/dw"
  assert profile.direction(name) == "ReferenceBody: outer backward of IG gradient"
