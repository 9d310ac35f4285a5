"""common.mobilenet: the shifted depthwise form equals the grouped convolution, and the flag selects it;
its fusion boundaries change no number (to second order) and are in the compiled XLA:CPU program."""

import flax
import jax
import jax.numpy as jnp
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


@pytest.mark.parametrize("padding", ["VALID", ((1, 1), (1, 1)), ((0, 2), (1, 0))])
@pytest.mark.parametrize("stride", [1, 2])
def test_depthwise_explicit_padding_equals_grouped_conv(padding, stride):
  x = jax.random.normal(jax.random.key(0), (2, 8, 7, 3))
  k = jax.random.normal(jax.random.key(1), (3, 3, 1, 3))
  want = mobilenet.grouped_depthwise_conv(x, k, stride, padding)
  np.testing.assert_allclose(mobilenet.depthwise_conv(x, k, stride, padding), want, rtol=1e-5, atol=1e-5)


def _body_pair():
  settings_ = ((1, 8, 1, 1), (6, 12, 1, 2))
  ours = mobilenet.MobileNetV2Body(settings=settings_, last_channels=16, shifted_depthwise=True)
  theirs = mobilenet.MobileNetV2Body(settings=settings_, last_channels=16, shifted_depthwise=False)
  return ours, theirs


def test_shifted_flag_selects_the_elementwise_form():
  """The flagged body (and its gradient) holds no grouped convolution; the unflagged one does."""
  ours, theirs = _body_pair()
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 5))
  v = ours.init(jax.random.key(1), x, train=False)

  def grad_of(model):
    def loss(p, x):
      out, _ = model.apply({**v, "params": p}, x, train=True, mutable=["batch_stats"])
      return jnp.sum(out**2)

    return jax.grad(loss, argnums=(0, 1))

  assert mobilenet.count_grouped_convs(grad_of(ours), v["params"], x) == 0
  assert mobilenet.count_grouped_convs(lambda x: theirs.apply(v, x, train=False), x) == 2


def test_shifted_depthwise_body_equals_grouped_conv_body():
  """Same parameter tree, same outputs and same gradients (parameters and input) in both modes."""
  ours, theirs = _body_pair()
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 5))
  v = jax.jit(lambda k: ours.init(k, x, train=False))(jax.random.key(1))
  v_theirs = theirs.init(jax.random.key(1), x, train=False)
  assert jax.tree.structure(v) == jax.tree.structure(v_theirs)
  jax.tree.map(np.testing.assert_array_equal, v, v_theirs)  # same init, same names and shapes

  def loss(model, p, x):
    out, _ = model.apply({**v, "params": p}, x, train=True, mutable=["batch_stats"])
    return jnp.sum(jnp.sin(out)), out

  grad = lambda model: jax.jit(jax.value_and_grad(lambda p, x: loss(model, p, x), (0, 1), has_aux=True))
  (la, a), ga = grad(ours)(v["params"], x)
  (lb, b), gb = grad(theirs)(v["params"], x)
  np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(la, lb, rtol=1e-4, atol=1e-5)
  jax.tree.map(lambda p, q: np.testing.assert_allclose(p, q, rtol=1e-3, atol=1e-4), ga, gb)


def _second_order(boundaries: bool):
  """grad_k |d/dx sum(silu(dw(silu(x))))|^2: the grad-of-grad shape of AgileNN's XAI terms."""

  def inner(x, k):
    return jnp.sum(jax.nn.silu(mobilenet.depthwise_conv(jax.nn.silu(x), k, 2, boundaries=boundaries)))

  def outer(k, x):
    g = jax.grad(inner)(x, k)
    return jnp.sum(g**2), g

  return jax.jit(jax.value_and_grad(outer, has_aux=True))


def test_fusion_boundaries_keep_every_number_and_reach_the_compiled_program():
  """With and without the boundaries: the same conv, first-order and second-order gradients; the
  boundaried program holds XLA conditionals (4 per conv in this grad-of-grad), the other none."""
  x = jax.random.normal(jax.random.key(0), (2, 9, 9, 4))
  k = jax.random.normal(jax.random.key(1), (3, 3, 1, 4))
  on, off = _second_order(True), _second_order(False)
  (va, ga), da = on(k, x)
  (vb, gb), db = off(k, x)
  np.testing.assert_allclose(va, vb, rtol=1e-6)
  np.testing.assert_allclose(ga, gb, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(da, db, rtol=1e-5, atol=1e-6)
  hlo = lambda f: f.lower(k, x).compile().as_text()
  assert hlo(on).count(" conditional(") >= 4 and hlo(off).count(" conditional(") == 0
  np.testing.assert_array_equal(
    jax.jit(lambda x: jax.vmap(lambda x: mobilenet.depthwise_conv(x[None], k)[0])(x))(x),
    jax.jit(lambda x: mobilenet.depthwise_conv(x, k, boundaries=False))(x),
  )


def test_make_divisible():
  assert [mobilenet.make_divisible(v) for v in (3, 16 * 0.35, 32 * 0.75, 100)] == [8, 8, 24, 104]


@pytest.mark.parametrize(
  "size,stride,padding",
  [(9, 1, "SAME"), (9, 2, "SAME"), (8, 2, "SAME"), (7, 3, ((0, 2), (1, 0))), (6, 1, "VALID")],
)
def test_fused_filter_gradient_equals_autodiff_to_second_order(size, stride, padding):
  """The custom VJP (filter gradient as one multi-output reduction, its own bilinear VJP) gives
  autodiff's numbers in float64: the first-order gradients and the grad-of-grad in input and kernel."""
  with jax.enable_x64(True):
    x = jax.random.normal(jax.random.key(0), (2, size, size + 1, 4), jnp.float64)
    k = jax.random.normal(jax.random.key(1), (3, 3, 1, 4), jnp.float64)

    def inner(x, k, fused):
      y = mobilenet.depthwise_conv(jax.nn.silu(x), k, stride, padding, fused_filter_gradient=fused)
      return jnp.sum(jax.nn.silu(y) ** 2)

    def outer(x, k, fused):
      gx, gk = jax.grad(inner, (0, 1))(x, k, fused)
      return jnp.sum(gx**2) + jnp.sum(jnp.sin(gk))

    for f in (inner, outer):
      step = jax.jit(jax.value_and_grad(f, (0, 1)), static_argnums=2)
      (va, ga), (vb, gb) = step(x, k, True), step(x, k, False)
      np.testing.assert_allclose(va, vb, rtol=1e-10)
      for a, b in zip(ga, gb, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


def test_autodiff_reductions_context_selects_autodiffs_filter_gradient():
  """The default form is the custom VJP; inside common.xla_cpu.autodiff_reductions() it is autodiff's."""
  from common import xla_cpu

  x = jax.random.normal(jax.random.key(0), (2, 6, 6, 3))
  k = jax.random.normal(jax.random.key(1), (3, 3, 1, 3))
  text = lambda: str(jax.make_jaxpr(jax.grad(lambda k: mobilenet.depthwise_conv(x, k).sum()))(k))
  assert "custom_vjp_call" in text()
  with xla_cpu.autodiff_reductions():
    assert "custom_vjp_call" not in text()


def test_pointwise_conv_equals_nn_conv_to_second_order():
  """`PointwiseConv` (the filter gradient as one matmul) has nn.Conv's parameter, init, output and
  first- and second-order gradients (float64), and its gradient program holds the matmul."""
  with jax.enable_x64(True):
    x = jax.random.normal(jax.random.key(0), (2, 5, 4, 3), jnp.float64)
    ours = mobilenet.PointwiseConv(6, dot_filter_gradient=True)
    theirs = flax.linen.Conv(6, (1, 1), use_bias=False)
    v = theirs.init(jax.random.key(1), x)
    assert jax.tree.map(jnp.shape, ours.init(jax.random.key(1), x)) == jax.tree.map(jnp.shape, v)
    np.testing.assert_array_equal(ours.init(jax.random.key(1), x)["params"]["kernel"], v["params"]["kernel"])

    def grads(model):
      loss = lambda p, x: jnp.sum(jnp.sin(model.apply({"params": p}, x)))
      g = jax.grad(loss, argnums=(0, 1))
      # second order: the gradient of a function of the input gradient (as the XAI losses take)
      gg = jax.grad(lambda p, x: jnp.sum(g(p, x)[1] ** 2), argnums=(0, 1))
      return g(v["params"], x), gg(v["params"], x)

    close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    close(ours.apply(v, x), theirs.apply(v, x))
    jax.tree.map(close, grads(ours), grads(theirs))
    hlo = jax.jit(jax.grad(lambda p: jnp.sum(ours.apply({"params": p}, x) ** 2))).lower(v["params"]).as_text()
    assert "stablehlo.dot_general" in hlo
