"""MobileNetV2 building blocks (Sandler et al., 2018), shared by techniques that cut it.

`InvertedResidual` is the expand (1x1) -> depthwise (3x3) -> project (1x1) block
with ReLU6 and a residual when the shape allows. `MobileNetV2Body` runs the
stack of blocks given by (expansion t, channels c, repeats n, stride s) rows,
scaled by a width multiplier, then the 1x1 conv to `last_channels`.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax

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


class InvertedResidual(nn.Module):
  """MobileNetV2 block; `bn_axis_name`-free, BN momentum 0.9 (Keras' 0.99 is too slow for short runs)."""

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
  """

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
