"""The split MobileNetV2 of RTCoInfer, its switchable batch norm, and the CLIO / SPINN baselines.

Device part: the stem conv (3 -> stem channels, 3x3, stride 2), BN, ReLU6, keep the first
c channels, min-max quantise to b bits. Server part: a dense 3x3 conv back to 32 channels
(the reference's modified first block, no residual), BN, ReLU6, 1x1 conv to 16, BN, then the
rest of MobileNetV2 (`common.mobilenet.MobileNetV2Body`) and a linear head.

Channel truncation is a mask (channels >= c are zero), so c and b are traced scalars and
one compiled step serves every setup; zero channels are constant and pass the quantiser
unchanged, and a zero input channel of the dense conv equals slicing its weights.

Switchable BN: the modules use ordinary BN (`common.batchnorm.BatchNorm`, flax's); the *statistics* pytree carries a
leading setup axis [S, ...] (`stack_stats`), and a setup is run with `select_stats(stats, i)`.
The scale and shift are ordinary shared parameters. Switching setups is choosing an index.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from coinfer import compress
from common.batchnorm import BatchNorm
from common.mobilenet import MOBILENET_V2_SETTINGS, MobileNetV2Body

BN_MOMENTUM = 0.9


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Settings of the split model.

  Attributes:
    num_classes: logits.
    width_mult: MobileNetV2 width multiplier of the server body.
    settings: (t, c, n, s) rows after the first block (the reference's rows 2..7).
    last_channels: channels of the final 1x1 conv.
    stem_channels: stem output channels (the largest c of the setups).
    stride_cap: stride clip of the body (1 keeps small inputs from vanishing).
    per_sample_quant: quantiser min/max per image (deployment) or over the batch (reference).
    shifted_depthwise: the body's depthwise convs as shifted multiply-adds (training on
      XLA:CPU) or grouped (export: TFLite DEPTHWISE_CONV_2D); same parameters.
  """

  num_classes: int = 10
  width_mult: float = 1.0
  settings: tuple = MOBILENET_V2_SETTINGS[1:]
  last_channels: int = 1280
  stem_channels: int = 32
  stride_cap: int = 2
  per_sample_quant: bool = True
  shifted_depthwise: bool = True


def _bn(train: bool, name: str) -> nn.BatchNorm:
  return BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM, name=name)


class DevicePart(nn.Module):
  """Stem conv -> BN -> ReLU6 -> keep c channels -> quantise to b bits. Output [B, H/2, W/2, stem]."""

  config: ModelConfig

  @nn.compact
  def __call__(
    self, x_BHWC: jax.Array, channels: jax.Array, bits: jax.Array, *, train: bool, quantize: bool = True
  ) -> jax.Array:
    cfg = self.config
    h = nn.Conv(cfg.stem_channels, (3, 3), strides=2, padding=((1, 1), (1, 1)), use_bias=False, name="stem")(
      x_BHWC
    )
    h = nn.relu6(_bn(train, "stem_bn")(h))
    mask = (jnp.arange(cfg.stem_channels) < channels).astype(h.dtype)
    h = h * mask
    if not quantize:  # the int8 export: the quantiser runs as plain code after the network
      return h
    return compress.quantize(h, bits, per_sample=cfg.per_sample_quant)


class ServerPart(nn.Module):
  """Dense 3x3 conv (c -> 32) -> BN -> ReLU6 -> 1x1 conv -> BN -> MobileNetV2 rest -> logits."""

  config: ModelConfig
  decoder_kernel: int = 3  # CLIO's copies use a 1x1 conv here

  @nn.compact
  def __call__(self, z_BHWC: jax.Array, *, train: bool) -> tuple[jax.Array, dict]:
    cfg = self.config
    k = (self.decoder_kernel, self.decoder_kernel)
    h = nn.Conv(32, k, padding="SAME", use_bias=False, name="decoder")(z_BHWC)
    h = nn.relu6(_bn(train, "decoder_bn")(h))
    h = nn.Conv(16, (1, 1), use_bias=False, name="block1_project")(h)
    h = _bn(train, "block1_bn")(h)
    h = MobileNetV2Body(
      width_mult=cfg.width_mult,
      settings=tuple(cfg.settings),
      last_channels=cfg.last_channels,
      stride_cap=cfg.stride_cap,
      bn_momentum=BN_MOMENTUM,
      shifted_depthwise=cfg.shifted_depthwise,
      name="body",
    )(h, train=train)
    features = h.mean(axis=(1, 2))
    logits = nn.Dense(cfg.num_classes, name="head")(features)
    return logits, {"features": features}


class SplitNet(nn.Module):
  """The whole switchable split CNN: `(x, channels, bits) -> (logits, aux)`."""

  config: ModelConfig

  def setup(self):
    self.device = DevicePart(self.config)
    self.server = ServerPart(self.config)

  def __call__(self, x_BHWC, channels, bits, *, train: bool) -> tuple[jax.Array, dict]:
    z = self.device(x_BHWC, channels, bits, train=train)
    logits, aux = self.server(z, train=train)
    return logits, {**aux, "payload": z}


def stack_stats(batch_stats: Any, num_setups: int) -> Any:
  """Repeats every BN statistic along a new leading setup axis [S, ...]."""
  return jax.tree.map(lambda a: jnp.broadcast_to(a, (num_setups, *a.shape)).copy(), batch_stats)


def select_stats(stacked: Any, index: jax.typing.ArrayLike) -> Any:
  """The BN statistics of setup `index` (a traced int is fine)."""
  return jax.tree.map(lambda a: a[index], stacked)


def update_stats(stacked: Any, index: jax.typing.ArrayLike, row: Any) -> Any:
  """Writes setup `index`'s statistics back; every other setup's stay as they were."""
  return jax.tree.map(lambda a, r: a.at[index].set(r), stacked, row)


# ---------------------------------------------------------------- baselines


class ClioNet(nn.Module):
  """CLIO (Huang et al., MobiCom'20), as in the reference: a shared stem, the first w channels
  sent, and one server copy per width w (BN + ReLU6 on the slice, a 1x1 conv w -> 32, the rest
  of MobileNetV2, a head). `__call__(x, width_index)` runs one copy; `all_widths` runs every one."""

  config: ModelConfig
  widths: tuple = (1, 2, 4, 8, 16, 32)

  def setup(self):
    cfg = self.config
    self.stem = nn.Conv(cfg.stem_channels, (3, 3), strides=2, padding=((1, 1), (1, 1)), use_bias=False)
    self.stem_bn = BatchNorm(momentum=BN_MOMENTUM)
    self.slice_bn = [BatchNorm(momentum=BN_MOMENTUM) for _ in self.widths]
    self.servers = [ServerPart(cfg, decoder_kernel=1) for _ in self.widths]

  def device(self, x, *, train: bool):
    return nn.relu6(self.stem_bn(self.stem(x), use_running_average=not train))

  def server(self, i: int, z, *, train: bool):
    h = nn.relu6(self.slice_bn[i](z, use_running_average=not train))
    return self.servers[i](h, train=train)[0]

  def __call__(self, x, bits=None, *, train: bool) -> list[jax.Array]:
    """Logits of every width (a list); `bits` quantises the slice (None: float, as CLIO trains)."""
    h = self.device(x, train=train)
    out = []
    for i, w in enumerate(self.widths):
      z = h[..., :w]
      if bits is not None:
        z = compress.quantize(z, bits, per_sample=self.config.per_sample_quant)
      out.append(self.server(i, z, train=train))
    return out


class SpinnNet(nn.Module):
  """SPINN (Laskaridis et al., MobiCom'20), as in the reference: the full network on the server
  plus an early exit after the stem on the device (ConvBNReLU6 x2 with stride 2, 2x2 average
  pooling, linear). Returns (final logits, exit logits)."""

  config: ModelConfig
  exit_channels: int = 128

  @nn.compact
  def __call__(self, x, *, train: bool) -> tuple[jax.Array, jax.Array]:
    cfg = self.config
    h = nn.Conv(cfg.stem_channels, (3, 3), strides=2, padding=((1, 1), (1, 1)), use_bias=False, name="stem")(
      x
    )
    h = nn.relu6(_bn(train, "stem_bn")(h))
    e = h
    for i in range(2):
      e = nn.Conv(
        self.exit_channels, (3, 3), strides=2, padding=((1, 1), (1, 1)), use_bias=False, name=f"exit{i}"
      )(e)
      e = nn.relu6(_bn(train, f"exit{i}_bn")(e))
    b, hh, ww, c = e.shape
    if hh % 2 or ww % 2:
      e = jax.image.resize(e, (b, 2 * hh, 2 * ww, c), "nearest")
      hh, ww = 2 * hh, 2 * ww
    e = e.reshape(b, 2, hh // 2, 2, ww // 2, c).mean(axis=(2, 4))  # adaptive average pool to 2x2
    exit_logits = nn.Dense(cfg.num_classes, name="exit_head")(e.reshape(b, -1))
    final, _ = ServerPart(cfg, name="server")(h, train=train)
    return final, exit_logits
