"""MobileNetV2 building blocks (Sandler et al., 2018), shared by techniques that cut it.

`InvertedResidual` is the expand (1x1) -> depthwise (3x3) -> project (1x1) block
with ReLU6 and a residual when the shape allows. `MobileNetV2Body` runs the
stack of blocks given by (expansion t, channels c, repeats n, stride s) rows,
scaled by a width multiplier, then the 1x1 conv to `last_channels`.

`DepthwiseConv` computes exactly what `nn.Conv(C, (k, k), feature_group_count=C,
padding=..., use_bias=False)` computes, with the same parameter ("kernel",
shape (k, k, 1, C)). With `shifted=True` it is k*k shifted multiply-adds: XLA's
CPU backend (jaxlib 0.10.2) lowers a grouped convolution's filter gradient to a
dense C x C convolution, an order of magnitude slower than this elementwise
form, which matters wherever a step differentiates through depthwise layers
(twice, for AgileNN's grad-of-grad). With `shifted=False` it is XLA's grouped
convolution, which the TFLite converter maps to DEPTHWISE_CONV_2D: train with
the shifted form, export with the grouped one; the parameters are the same.
The blocks pass their `shifted_depthwise` flag through. The shifted form's input and output
sit behind `common.xla_cpu.fusion_boundary`, and its filter gradient is one multi-output
reduction (see `depthwise_conv`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from common.batchnorm import BatchNorm, channel_sums
from common.xla_cpu import fused_reductions, fusion_boundary

# (t, c, n, s) rows of the ImageNet MobileNetV2 after the 32-channel stem.
MOBILENET_V2_SETTINGS: tuple[tuple[int, int, int, int], ...] = (
  (1, 16, 1, 1),
  (6, 24, 2, 2),
  (6, 32, 3, 2),
  (6, 64, 4, 2),
  (6, 96, 3, 1),
  (6, 160, 3, 2),
  (6, 320, 1, 1),
)


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
  """Rounds channels to a multiple of `divisor`, never below 90% of `v` (the reference rule)."""
  min_value = min_value or divisor
  new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
  if new_v < 0.9 * v:
    new_v += divisor
  return new_v


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
  """TF/XLA "SAME" padding (before, after) of one spatial axis."""
  out = math.ceil(size / stride)
  total = max((out - 1) * stride + kernel - size, 0)
  return total // 2, total - total // 2


Padding = str | Sequence[tuple[int, int]]


def _pads(padding: Padding, h: int, w: int, kh: int, kw: int, stride: int) -> tuple[tuple[int, int], ...]:
  if padding == "SAME":
    return same_padding(h, kh, stride), same_padding(w, kw, stride)
  if padding == "VALID":
    return (0, 0), (0, 0)
  return tuple((int(a), int(b)) for a, b in padding)


def _taps(xp_BHWC, stride: int, oh: int, ow: int, kh: int, kw: int):
  """The kh * kw strided windows of the padded input, each (B, oh, ow, C), tap (i, j) in row-major order."""
  return [
    xp_BHWC[:, i : i + (oh - 1) * stride + 1 : stride, j : j + (ow - 1) * stride + 1 : stride, :]
    for i in range(kh)
    for j in range(kw)
  ]


def _tap_sum(xp_BHWC, kernel_KK1C, stride: int, oh: int, ow: int):
  """sum_ij window_ij(xp) * kernel[i, j, 0]: the depthwise conv of the padded input."""
  kh, kw = kernel_KK1C.shape[:2]
  out = None
  for t, tap in enumerate(_taps(xp_BHWC, stride, oh, ow, kh, kw)):
    term = tap * kernel_KK1C[t // kw, t % kw, 0]
    out = term if out is None else out + term
  return out


def _tap_sum_transpose(g_BHWC, kernel_KK1C, stride: int, padded_hw: tuple[int, int]):
  """The transpose of `_tap_sum` in its input: each window's cotangent padded back into place."""
  kh, kw = kernel_KK1C.shape[:2]
  _, oh, ow, _ = g_BHWC.shape
  hp, wp = padded_hw
  zero = jnp.zeros((), g_BHWC.dtype)
  out = None
  for i in range(kh):
    for j in range(kw):
      config = (
        (0, 0, 0),
        (i, hp - i - (oh - 1) * stride - 1, stride - 1),
        (j, wp - j - (ow - 1) * stride - 1, stride - 1),
        (0, 0, 0),
      )
      term = jax.lax.pad(g_BHWC * kernel_KK1C[i, j, 0], zero, config)
      out = term if out is None else out + term
  return out


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _tap_correlation(xp_BHWC, g_BHWC, stride: int, kh: int, kw: int):
  """dk[i, j, 0, c] = sum_{b, h, w} window_ij(xp)[b, h, w, c] g[b, h, w, c]: the filter gradient.

  One multi-output reduction over the width (the kh * kw products of the windows and g, fused; g
  read once), then sums over height and batch: `common.batchnorm.channel_sums`. Written so because
  XLA:CPU's autodiff form, a separate reduction per tap, materializes every window as a buffer of
  its own under YNN's reductions and runs its own reduction emitter slowly without them
  (`python -m launch.bench agile --ops_only`).
  Its VJP is the bilinear one (`_tap_correlation_bwd`), so grad-of-grad works.
  """
  _, oh, ow, _ = g_BHWC.shape
  prods = tuple(tap * g_BHWC for tap in _taps(xp_BHWC, stride, oh, ow, kh, kw))
  return jnp.stack(channel_sums(g_BHWC.shape, *prods)).reshape(kh, kw, 1, -1)


def _tap_correlation_fwd(xp_BHWC, g_BHWC, stride, kh, kw):
  return _tap_correlation(xp_BHWC, g_BHWC, stride, kh, kw), (xp_BHWC, g_BHWC)


def _tap_correlation_bwd(stride, kh, kw, res, dk_KK1C):
  xp_BHWC, g_BHWC = res
  _, oh, ow, _ = g_BHWC.shape
  d_xp = _tap_sum_transpose(g_BHWC, dk_KK1C, stride, xp_BHWC.shape[1:3])
  d_g = _tap_sum(xp_BHWC, dk_KK1C, stride, oh, ow)
  return d_xp, d_g


_tap_correlation.defvjp(_tap_correlation_fwd, _tap_correlation_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _tap_sum_fast(xp_BHWC, kernel_KK1C, stride: int, oh: int, ow: int):
  """`_tap_sum` whose VJP keeps only the padded input (not its kh * kw windows) for the backward pass."""
  return _tap_sum(xp_BHWC, kernel_KK1C, stride, oh, ow)


def _tap_sum_fast_fwd(xp_BHWC, kernel_KK1C, stride, oh, ow):
  return _tap_sum(xp_BHWC, kernel_KK1C, stride, oh, ow), (xp_BHWC, kernel_KK1C)


def _tap_sum_fast_bwd(stride, oh, ow, res, g_BHWC):
  xp_BHWC, kernel_KK1C = res
  kh, kw = kernel_KK1C.shape[:2]
  d_xp = _tap_sum_transpose(g_BHWC, kernel_KK1C, stride, xp_BHWC.shape[1:3])
  d_k = _tap_correlation(xp_BHWC, g_BHWC, stride, kh, kw)
  return d_xp, d_k.astype(kernel_KK1C.dtype)


_tap_sum_fast.defvjp(_tap_sum_fast_fwd, _tap_sum_fast_bwd)


def depthwise_conv(
  x_BHWC: jax.Array,
  kernel_KK1C: jax.Array,
  stride: int = 1,
  padding: Padding = "SAME",
  *,
  boundaries: bool = True,
  fused_filter_gradient: bool | None = None,
) -> jax.Array:
  """Depthwise convolution as a sum over taps of shifted slices times the tap's weights.

  `padding` is "SAME", "VALID" or ((top, bottom), (left, right)), as in `lax.conv_general_dilated`.
  `boundaries`: the input and the output pass through `common.xla_cpu.fusion_boundary`, so
  XLA:CPU reads each from a buffer instead of recomputing its producer once per tap (the same
  numbers; AgileNN's paper-shaped full step 7.87 s -> 4.17 s, docs/agile.md).
  `fused_filter_gradient`: the VJP computes the filter gradient as one multi-output reduction
  from the padded input (`_tap_correlation`) instead of autodiff's reduction per tap, whose
  residuals are the kh * kw windows (the same numbers up to summation order). None (the
  default): `common.xla_cpu.fused_reductions()`, True unless inside `autodiff_reductions()`.
  """
  if boundaries:
    pred = jnp.isfinite(jax.lax.stop_gradient(kernel_KK1C).reshape(-1)[0])
    x_BHWC = fusion_boundary(x_BHWC, pred)
  kh, kw = kernel_KK1C.shape[:2]
  _, h, w, _ = x_BHWC.shape
  ph, pw = _pads(padding, h, w, kh, kw, stride)
  xp = jnp.pad(x_BHWC, ((0, 0), ph, pw, (0, 0)))
  oh = (h + sum(ph) - kh) // stride + 1
  ow = (w + sum(pw) - kw) // stride + 1
  if fused_filter_gradient is None:
    fused_filter_gradient = fused_reductions()
  tap_sum = _tap_sum_fast if fused_filter_gradient else _tap_sum
  out = tap_sum(xp, kernel_KK1C, stride, oh, ow)
  return fusion_boundary(out, pred) if boundaries else out


def grouped_depthwise_conv(
  x_BHWC: jax.Array, kernel_KK1C: jax.Array, stride: int = 1, padding: Padding = "SAME"
) -> jax.Array:
  """The same convolution as XLA's grouped convolution (feature_group_count = channels)."""
  pad = padding if isinstance(padding, str) else tuple(tuple(p) for p in padding)
  return jax.lax.conv_general_dilated(
    x_BHWC,
    kernel_KK1C,
    (stride, stride),
    pad,
    dimension_numbers=("NHWC", "HWIO", "NHWC"),
    feature_group_count=x_BHWC.shape[-1],
  )


def count_grouped_convs(fn, *args) -> int:
  """How many convolutions with feature_group_count > 1 the jaxpr of fn(*args) holds (nested too)."""
  import jax.extend

  def count(jaxpr) -> int:
    n = 0
    for eqn in jaxpr.eqns:
      if eqn.primitive.name == "conv_general_dilated" and eqn.params["feature_group_count"] > 1:
        n += 1
      n += sum(count(sub) for sub in jax.extend.core.jaxprs_in_params(eqn.params))
    return n

  return count(jax.make_jaxpr(fn)(*args).jaxpr)


def _conv1x1(x_BHWC, kernel_11CD):
  return jax.lax.conv_general_dilated(
    x_BHWC, kernel_11CD, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
  )


@jax.custom_vjp
def pointwise_conv(x_BHWC: jax.Array, kernel_11CD: jax.Array) -> jax.Array:
  """A 1x1 convolution (nn.Conv(D, (1, 1), use_bias=False)'s forward) whose filter gradient is
  one matmul over batch x space, [B H W, C]^T [B H W, D]. XLA:CPU emits autodiff's filter
  gradient as a convolution whose window is the whole image, which first transposes the
  activation (and the BN-apply fusion that produces it) to [C, H, W, B]: 3-4x slower at the
  remote predictor's shapes (docs/agile.md). Differentiable twice (its VJP is plain JAX)."""
  return _conv1x1(x_BHWC, kernel_11CD)


def _pointwise_fwd(x_BHWC, kernel_11CD):
  return _conv1x1(x_BHWC, kernel_11CD), (x_BHWC, kernel_11CD)


def _pointwise_bwd(res, g_BHWD):
  x_BHWC, kernel_11CD = res
  dx = _conv1x1(g_BHWD, jnp.swapaxes(kernel_11CD, 2, 3))
  c, d = x_BHWC.shape[-1], g_BHWD.shape[-1]
  dk = jnp.einsum("nc,nd->cd", x_BHWC.reshape(-1, c), g_BHWD.reshape(-1, d))
  return dx, dk.reshape(kernel_11CD.shape)


pointwise_conv.defvjp(_pointwise_fwd, _pointwise_bwd)


class PointwiseConv(nn.Module):
  """Drop-in for nn.Conv(features, (1, 1), use_bias=False): the same "kernel" parameter and init.

  Attributes:
    dot_filter_gradient: the filter gradient as one matmul (`pointwise_conv`) instead of
      autodiff's convolution; the same forward.
  """

  features: int
  dot_filter_gradient: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param(
      "kernel", nn.initializers.lecun_normal(), (1, 1, x.shape[-1], self.features), jnp.float32
    )
    dtype = jnp.promote_types(x.dtype, kernel.dtype)
    conv = pointwise_conv if self.dot_filter_gradient else _conv1x1
    return conv(x.astype(dtype), kernel.astype(dtype))


class DepthwiseConv(nn.Module):
  """Drop-in for nn.Conv(C, (k, k), strides, padding, feature_group_count=C, use_bias=False).

  Attributes:
    shifted: True: k*k shifted multiply-adds (fast gradients on XLA:CPU); False:
      XLA's grouped convolution (what export wants: TFLite DEPTHWISE_CONV_2D).
  """

  kernel_size: int = 3
  stride: int = 1
  kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()
  padding: Padding = "SAME"
  shifted: bool = True

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = x.shape[-1]
    kernel = self.param("kernel", self.kernel_init, (self.kernel_size, self.kernel_size, 1, c))
    conv = depthwise_conv if self.shifted else grouped_depthwise_conv
    return conv(x, kernel.astype(x.dtype), self.stride, self.padding)


class InvertedResidual(nn.Module):
  """MobileNetV2 block; BN momentum 0.9 (Keras' 0.99 is too slow for short runs)."""

  out_channels: int
  stride: int
  expansion: int
  bn_momentum: float = 0.9
  shifted_depthwise: bool = True
  dot_filter_gradients: bool = False  # the 1x1 convs' filter gradients as matmuls (PointwiseConv)

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    in_channels = x.shape[-1]
    conv1x1 = lambda d, name: PointwiseConv(d, self.dot_filter_gradients, name=name)
    bn = lambda name: BatchNorm(use_running_average=not train, momentum=self.bn_momentum, name=name)
    h = x
    if self.expansion != 1:
      h = conv1x1(in_channels * self.expansion, "expand")(h)
      h = nn.relu6(bn("expand_bn")(h))
    h = DepthwiseConv(3, self.stride, shifted=self.shifted_depthwise, name="depthwise")(h)
    h = nn.relu6(bn("depthwise_bn")(h))
    h = conv1x1(self.out_channels, "project")(h)
    h = bn("project_bn")(h)
    if self.stride == 1 and in_channels == self.out_channels:
      h = h + x
    return h


class MobileNetV2Body(nn.Module):
  """The inverted-residual stack and the final 1x1 conv (no stem, no classifier).

  Attributes:
    width_mult: channel multiplier of every row.
    settings: (t, c, n, s) rows.
    last_channels: channels of the final 1x1 conv (scaled up when width_mult > 1).
    stride_cap: strides are clipped to this (1 keeps small inputs from vanishing).
    shifted_depthwise: the depthwise convs' form (`DepthwiseConv.shifted`; same parameters).
    dot_filter_gradients: the 1x1 convs' filter gradients as matmuls (`PointwiseConv`).
  """

  width_mult: float = 1.0
  settings: Sequence[tuple[int, int, int, int]] = MOBILENET_V2_SETTINGS
  last_channels: int = 1280
  stride_cap: int = 2
  bn_momentum: float = 0.9
  shifted_depthwise: bool = True
  dot_filter_gradients: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    i = 0
    for t, c, n, s in self.settings:
      out = make_divisible(c * self.width_mult)
      for j in range(n):
        stride = min(s, self.stride_cap) if j == 0 else 1
        block = InvertedResidual(
          out,
          stride,
          t,
          self.bn_momentum,
          self.shifted_depthwise,
          self.dot_filter_gradients,
          name=f"block{i}",
        )
        x = block(x, train=train)
        i += 1
    last = make_divisible(self.last_channels * max(1.0, self.width_mult))
    x = PointwiseConv(last, self.dot_filter_gradients, name="last_conv")(x)
    x = BatchNorm(use_running_average=not train, momentum=self.bn_momentum, name="last_bn")(x)
    return nn.relu6(x)
