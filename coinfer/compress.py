"""Compression of the split-point tensor: channel truncation and min-max quantisation.

A compression setup is a pair (channels c, bits b): keep the first c channels of
the stem output and quantise each to 2**b levels between its minimum and maximum
(RTCoInfer, Zhang et al., JSAC 2023; digest section 2). The residual rate is the
payload over the raw 8-bit image, c * b * (H/2) * (W/2) / (H * W * C * 8), which
is c * b / 96 for a 224 x 224 x 3 image.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from common.errors import ConfigError

DEFAULT_CHANNELS = (1, 2, 3, 4, 5, 6, 7, 8, 16, 32)
DEFAULT_BITS = (1, 2, 4, 8, 16)
_RANGE_GUARD = 1e-6  # (max - min) below this counts as a constant channel (CLIO's guard).


def quantize(x: jax.Array, bits: jax.typing.ArrayLike, *, per_sample: bool = False) -> jax.Array:
  """Per-channel min-max quantisation to `bits` bits, returned dequantised.

  For each channel j: mn, mx = min, max of x[..., j]; q = round((x - mn) * L / (mx - mn))
  with L = 2**bits - 1 intervals; x_hat = mn + q * (mx - mn) / L. The gradient is the
  identity (straight-through estimator). A channel whose range is below 1e-6 passes
  through unchanged (no NaN; the reference divides by zero there).

  Args:
    x: [B, ..., C] tensor (channels last).
    bits: bits per value (int or traced scalar), 1..16.
    per_sample: min/max per example (deployment) instead of over the whole batch
      (the reference's training shortcut).

  Returns:
    The dequantised tensor, same shape and dtype as x.
  """
  axes = tuple(range(1 if per_sample else 0, x.ndim - 1))
  mn = jnp.min(x, axis=axes, keepdims=True)
  mx = jnp.max(x, axis=axes, keepdims=True)
  levels = jnp.exp2(jnp.asarray(bits, x.dtype)) - 1.0
  span = mx - mn
  safe = jnp.where(span < _RANGE_GUARD, 1.0, span)
  q = jnp.round((x - mn) * levels / safe)
  x_hat = jnp.where(span < _RANGE_GUARD, x, mn + q * safe / levels)
  # forward value exactly x_hat (x - sg(x) == 0), gradient exactly the identity
  return jax.lax.stop_gradient(x_hat) + (x - jax.lax.stop_gradient(x))


def encode_np(z: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Per-sample, per-channel codes of a [B, H, W, c] tensor: (codes uint, mn [B,c], mx [B,c]).

  This is what a device puts on the wire (the codes packed to `bits` bits, plus two
  floats per channel); `decode_np` inverts it. Matches `quantize(..., per_sample=True)`.
  """
  z = np.asarray(z, np.float32)
  mn = z.min(axis=(1, 2))
  mx = z.max(axis=(1, 2))
  span = mx - mn
  safe = np.where(span < _RANGE_GUARD, 1.0, span).astype(np.float32)
  levels = np.float32(2**bits - 1)
  q = np.round((z - mn[:, None, None]) * levels / safe[:, None, None])
  return q.astype(np.uint16 if bits > 8 else np.uint8), mn, mx


def decode_np(codes: np.ndarray, mn: np.ndarray, mx: np.ndarray, bits: int) -> np.ndarray:
  """Dequantises `encode_np` codes back to float32 [B, H, W, c]."""
  span = mx - mn
  safe = np.where(span < _RANGE_GUARD, 1.0, span).astype(np.float32)
  levels = np.float32(2**bits - 1)
  out = mn[:, None, None] + codes.astype(np.float32) * safe[:, None, None] / levels
  return out.astype(np.float32)


def payload_bits(channels: int, bits: int, image_shape: Sequence[int], *, side_info: bool = False) -> int:
  """Bits on the wire per image: c * b * ceil(H/2) * ceil(W/2) (+ 64 c for the float min/max)."""
  h, w = int(image_shape[0]), int(image_shape[1])
  n = channels * bits * math.ceil(h / 2) * math.ceil(w / 2)
  return n + (64 * channels if side_info else 0)


def residual_rate(channels: int, bits: int, image_shape: Sequence[int]) -> float:
  """Payload over raw image size (8-bit pixels): c * b * (H/2)(W/2) / (H W C 8); c*b/96 at 224x224x3."""
  h, w, c = (int(v) for v in image_shape)
  return payload_bits(channels, bits, image_shape) / (h * w * c * 8)


@dataclasses.dataclass(frozen=True)
class Setup:
  """One compression setup."""

  channels: int
  bits: int

  @property
  def name(self) -> str:
    return f"N{self.channels}Q{self.bits}"


def make_setups(
  channels: Sequence[int] = DEFAULT_CHANNELS, bits: Sequence[int] = DEFAULT_BITS
) -> list[Setup]:
  """The grid of setups, channels-major (index = channel_index * len(bits) + bit_index, as the reference)."""
  if not channels or not bits:
    raise ConfigError(f"setups need channels and bits; got channels={list(channels)}, bits={list(bits)}")
  for b in bits:
    if not 1 <= int(b) <= 16:
      raise ConfigError(f"config.setups.bits contains {b}: must be in [1, 16]")
  if len(set(channels)) != len(channels) or len(set(bits)) != len(bits):
    raise ConfigError(f"setups must not repeat: channels={list(channels)}, bits={list(bits)}")
  return [Setup(int(c), int(b)) for c in channels for b in bits]


def setups_array(setups: Sequence[Setup]) -> np.ndarray:
  """[S, 2] int32 (channels, bits), what jitted code indexes with a traced setup id."""
  return np.asarray([[s.channels, s.bits] for s in setups], np.int32)


def pareto_front(
  sizes: Sequence[float], accuracies: Sequence[float], costs: Sequence[float] | None = None
) -> list[int]:
  """Indices not dominated in (size lower, accuracy higher, cost lower), sorted by size.

  A setup is dropped when another is no larger, no slower and at least as accurate,
  and strictly better in one of them (ties keep the first index). Replacing a dominated
  setup by its dominator never breaks a latency constraint and never lowers the
  accuracy, so an accuracy-maximising controller loses nothing by the reduction.
  """
  sizes = np.asarray(sizes, float)
  acc = np.asarray(accuracies, float)
  cost = np.zeros_like(sizes) if costs is None else np.asarray(costs, float)
  keep = []
  for i in range(len(sizes)):
    dominated = False
    for j in range(len(sizes)):
      if j == i:
        continue
      no_worse = sizes[j] <= sizes[i] and acc[j] >= acc[i] and cost[j] <= cost[i]
      better = sizes[j] < sizes[i] or acc[j] > acc[i] or cost[j] < cost[i]
      if no_worse and (better or j < i):
        dominated = True
        break
    if not dominated:
      keep.append(i)
  return sorted(keep, key=lambda i: (sizes[i], -acc[i]))
