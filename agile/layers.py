"""Depthwise convolution as a sum of shifted products, and MobileNetV2 blocks that use it.

XLA's CPU backend runs the backward pass of grouped convolutions
(`feature_group_count` = channels) an order of magnitude slower than the
equivalent elementwise form, and AgileNN's training step differentiates the
remote predictor and (twice) the evaluator's depthwise layers. `DepthwiseConv`
computes exactly what `nn.Conv(C, (k, k), feature_group_count=C, padding="SAME")`
computes, with the same parameter ("kernel", shape (k, k, 1, C)), as k*k shifted
multiply-adds. `InvertedResidual` and `MobileNetV2Body` mirror
`common.mobilenet` (same parameter names and tree, tested equal) with it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from common.mobilenet import MOBILENET_V2_SETTINGS, make_divisible


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
  """TF/XLA "SAME" padding (before, after) of one spatial axis."""
  out = math.ceil(size / stride)
  total = max((out - 1) * stride + kernel - size, 0)
  return total // 2, total - total // 2


def depthwise_conv(x_BHWC: jax.Array, kernel_KK1C: jax.Array, stride: int = 1) -> jax.Array:
  """Depthwise 'SAME' convolution, sum over taps of shifted slices times the tap's weights."""
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
  """`common.mobilenet.InvertedResidual` with `DepthwiseConv` (same parameters and output)."""

  out_channels: int
  stride: int
  expansion: int
  bn_momentum: float = 0.9

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    in_channels = x.shape[-1]
    bn = lambda name: nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum, name=name)
    h = x
    if self.expansion != 1:
      h = nn.Conv(in_channels * self.expansion, (1, 1), use_bias=False, name="expand")(h)
      h = nn.relu6(bn("expand_bn")(h))
    h = DepthwiseConv(3, self.stride, name="depthwise")(h)
    h = nn.relu6(bn("depthwise_bn")(h))
    h = nn.Conv(self.out_channels, (1, 1), use_bias=False, name="project")(h)
    h = bn("project_bn")(h)
    if self.stride == 1 and in_channels == self.out_channels:
      h = h + x
    return h


class MobileNetV2Body(nn.Module):
  """`common.mobilenet.MobileNetV2Body` with `DepthwiseConv` (same parameters and output)."""

  width_mult: float = 1.0
  settings: Sequence[tuple[int, int, int, int]] = MOBILENET_V2_SETTINGS
  last_channels: int = 1280
  stride_cap: int = 2
  bn_momentum: float = 0.9

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    i = 0
    for t, c, n, s in self.settings:
      out = make_divisible(c * self.width_mult)
      for j in range(n):
        stride = min(s, self.stride_cap) if j == 0 else 1
        x = InvertedResidual(out, stride, t, self.bn_momentum, name=f"block{i}")(x, train=train)
        i += 1
    last = make_divisible(self.last_channels * max(1.0, self.width_mult))
    x = nn.Conv(last, (1, 1), use_bias=False, name="last_conv")(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum, name="last_bn")(x)
    return nn.relu6(x)
