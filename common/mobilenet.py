"""MobileNetV2 building blocks (Sandler et al., 2018), shared by techniques that cut it.

`InvertedResidual` is the expand (1x1) -> depthwise (3x3) -> project (1x1) block
with ReLU6 and a residual when the shape allows. `MobileNetV2Body` runs the
stack of blocks given by (expansion t, channels c, repeats n, stride s) rows,
scaled by a width multiplier, then the 1x1 conv to `last_channels`.

`DepthwiseConv` computes exactly what `nn.Conv(C, (k, k), feature_group_count=C,
padding="SAME", use_bias=False)` computes, with the same parameter ("kernel",
shape (k, k, 1, C)), as k*k shifted multiply-adds. XLA's CPU backend runs the
backward pass of grouped convolutions about an order of magnitude slower than
this elementwise form, which matters where a step differentiates through
depthwise layers (twice, for AgileNN's grad-of-grad). The blocks take
`shifted_depthwise=True` to use it; parameters are the same either way, so a
model trained with one form can be exported with the other (the grouped form
maps to TFLite's DEPTHWISE_CONV_2D).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

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


def depthwise_conv(x_BHWC: jax.Array, kernel_KK1C: jax.Array, stride: int = 1) -> jax.Array:
  """Depthwise 'SAME' convolution as a sum over taps of shifted slices times the tap's weights."""
  kh, kw = kernel_KK1C.shape[:2]
  _, h, w, _ = x_BHWC.shape
  ph, pw = same_padding(h, kh, stride), same_padding(w, kw, stride)
  xp = jnp.pad(x_BHWC, ((0, 0), ph, pw, (0, 0)))
  oh, ow = math.ceil(h / stride), math.ceil(w / stride)
  out = None
  for i in range(kh):
    for j in range(kw):
      tap = xp[:, i : i + (oh - 1) * stride + 1 : stride, j : j + (ow - 1) * stride + 1 : stride, :]
      term = tap * kernel_KK1C[i, j, 0]
      out = term if out is None else out + term
  return out


class DepthwiseConv(nn.Module):
  """Drop-in for nn.Conv(C, (k, k), strides, "SAME", feature_group_count=C, use_bias=False)."""

  kernel_size: int = 3
  stride: int = 1
  kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = x.shape[-1]
    kernel = self.param("kernel", self.kernel_init, (self.kernel_size, self.kernel_size, 1, c))
    return depthwise_conv(x, kernel.astype(x.dtype), self.stride)


class InvertedResidual(nn.Module):
  """MobileNetV2 block; BN momentum 0.9 (Keras' 0.99 is too slow for short runs)."""

  out_channels: int
  stride: int
  expansion: int
  bn_momentum: float = 0.9
  shifted_depthwise: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    in_channels = x.shape[-1]
    bn = lambda name: nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum, name=name)
    h = x
    if self.expansion != 1:
      h = nn.Conv(in_channels * self.expansion, (1, 1), use_bias=False, name="expand")(h)
      h = nn.relu6(bn("expand_bn")(h))
    hidden = h.shape[-1]
    h = nn.Conv(
      hidden,
      (3, 3),
      strides=self.stride,
      padding="SAME",
      feature_group_count=hidden,
      use_bias=False,
      name="depthwise",
    )(h)
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
    shifted_depthwise: use `DepthwiseConv` (fast gradients on CPU; same parameters).
  """

  width_mult: float = 1.0
  settings: Sequence[tuple[int, int, int, int]] = MOBILENET_V2_SETTINGS
  last_channels: int = 1280
  stride_cap: int = 2
  bn_momentum: float = 0.9
  shifted_depthwise: bool = False

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
