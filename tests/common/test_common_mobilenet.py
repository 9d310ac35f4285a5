"""common.mobilenet: the shifted depthwise form equals the grouped convolution, block for block."""

import jax
import numpy as np
import pytest

from common import mobilenet


@pytest.mark.parametrize("size,stride,c", [(8, 1, 5), (8, 2, 3), (7, 2, 4), (9, 3, 3), (6, 3, 2)])
def test_depthwise_equals_grouped_conv(size, stride, c):
  x = jax.random.normal(jax.random.key(0), (2, size, size, c))
  k = jax.random.normal(jax.random.key(1), (3, 3, 1, c))
  want = jax.lax.conv_general_dilated(
    x, k, (stride, stride), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=c
  )
  np.testing.assert_allclose(mobilenet.depthwise_conv(x, k, stride), want, rtol=1e-5, atol=1e-5)


def test_shifted_depthwise_body_equals_grouped_conv_body():
  settings_ = ((1, 8, 1, 1), (6, 12, 2, 2))
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 5))
  ours = mobilenet.MobileNetV2Body(settings=settings_, last_channels=16, shifted_depthwise=True)
  theirs = mobilenet.MobileNetV2Body(settings=settings_, last_channels=16)
  v = jax.jit(lambda k: ours.init(k, x, train=False))(jax.random.key(1))
  assert jax.tree.structure(v) == jax.tree.structure(
    jax.eval_shape(lambda: theirs.init(jax.random.key(1), x, train=False))
  )
  for train in (False, True):
    a = jax.jit(lambda v, x: ours.apply(v, x, train=train, mutable=["batch_stats"])[0])(v, x)
    b = jax.jit(lambda v, x: theirs.apply(v, x, train=train, mutable=["batch_stats"])[0])(v, x)
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_make_divisible():
  assert [mobilenet.make_divisible(v) for v in (3, 16 * 0.35, 32 * 0.75, 100)] == [8, 8, 24, 104]
