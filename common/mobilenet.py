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
sit behind `common.xla_cpu.fusion_boundary` (see `depthwise_conv`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from common.xla_cpu import fusion_boundary

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


def depthwise_conv(
  x_BHWC: jax.Array,
  kernel_KK1C: jax.Array,
  stride: int = 1,
  padding: Padding = "SAME",
  *,
  boundaries: bool = True,
) -> jax.Array:
  """Depthwise convolution as a sum over taps of shifted slices times the tap's weights.

  `padding` is "SAME", "VALID" or ((top, bottom), (left, right)), as in `lax.conv_general_dilated`.
  `boundaries`: the input and the output pass through `common.xla_cpu.fusion_boundary`, so
  XLA:CPU reads each from a buffer instead of recomputing its producer once per tap (the same
  numbers; AgileNN's paper-shaped full step 7.87 s -> 4.17 s, docs/agile.md).
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
  out = None
  for i in range(kh):
    for j in range(kw):
      tap = xp[:, i : i + (oh - 1) * stride + 1 : stride, j : j + (ow - 1) * stride + 1 : stride, :]
      term = tap * kernel_KK1C[i, j, 0]
      out = term if out is None else out + term
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

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    in_channels = x.shape[-1]
    bn = lambda name: nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum, name=name)
    h = x
    if self.expansion != 1:
      h = nn.Conv(in_channels * self.expansion, (1, 1), use_bias=False, name="expand")(h)
      h = nn.relu6(bn("expand_bn")(h))
    h = DepthwiseConv(3, self.stride, shifted=self.shifted_depthwise, name="depthwise")(h)
    h = nn.relu6(bn("depthwise_bn")(h))
    h = nn.Conv(self.out_channels, (1, 1), use_bias=False, name="project")(h)
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
  """

  width_mult: float = 1.0
  settings: Sequence[tuple[int, int, int, int]] = MOBILENET_V2_SETTINGS
  last_channels: int = 1280
  stride_cap: int = 2
  bn_momentum: float = 0.9
  shifted_depthwise: bool = True

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    i = 0
    for t, c, n, s in self.settings:
      out = make_divisible(c * self.width_mult)
      for j in range(n):
        stride = min(s, self.stride_cap) if j == 0 else 1
        x = InvertedResidual(out, stride, t, self.bn_momentum, self.shifted_depthwise, name=f"block{i}")(
          x, train=train
        )
        i += 1
    last = make_divisible(self.last_channels * max(1.0, self.width_mult))
    x = nn.Conv(last, (1, 1), use_bias=False, name="last_conv")(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum, name="last_bn")(x)
    return nn.relu6(x)
