"""What AgileNN sends over the link, and a per-image latency model.

Payload: the remote symbols (quantiser indices, log2(C) bits each). Reported as
raw bits per image, the empirical-entropy bound (the symbol histogram's entropy
times the symbol count, i.e. the best any memoryless code can do), and the best
of zlib, bz2 and lzma from the standard library on each test image's symbols.

Latency model: device compute time = MACs / (clock * MACs per cycle), link time
= bits / bandwidth, server time = MACs / server MAC rate. Compared with running
everything on the device and with sending the raw image to the server.
"""

from __future__ import annotations

import bz2
import dataclasses
import lzma
import math
import zlib
from collections.abc import Callable

import jax
import numpy as np

CODECS: dict[str, Callable[[bytes], bytes]] = {
  "zlib": lambda b: zlib.compress(b, 9),
  "bz2": lambda b: bz2.compress(b, 9),
  "lzma": lambda b: lzma.compress(b, preset=9 | lzma.PRESET_EXTREME),
}


def entropy_bits(symbols: np.ndarray, num_symbols: int) -> float:
  """Empirical entropy (bits per symbol) of the symbols' histogram."""
  counts = np.bincount(np.asarray(symbols).ravel(), minlength=num_symbols).astype(np.float64)
  p = counts[counts > 0] / counts.sum()
  return float(-(p * np.log2(p)).sum())


def payload_report(symbols_NHWR: np.ndarray, num_centroids: int) -> dict[str, float]:
  """Bits per image: raw, entropy bound, and each codec's mean over the images.

  Args:
    symbols_NHWR: int symbols of N test images.
    num_centroids: alphabet size C (raw cost log2 C bits per symbol).
  """
  symbols = np.asarray(symbols_NHWR)
  n = symbols.shape[0]
  per_image = int(np.prod(symbols.shape[1:]))
  bits_per_symbol = math.ceil(math.log2(max(num_centroids, 2)))
  h = entropy_bits(symbols, num_centroids)
  out = {
    "symbols_per_image": per_image,
    "raw_bits_per_image": float(per_image * bits_per_symbol),
    "entropy_bits_per_symbol": h,
    "entropy_bound_bits_per_image": h * per_image,
  }
  flat = symbols.reshape(n, -1).astype(np.uint8)
  for name, fn in CODECS.items():
    out[f"{name}_bits_per_image"] = float(np.mean([8 * len(fn(row.tobytes())) for row in flat]))
  best = min(CODECS, key=lambda c: out[f"{c}_bits_per_image"])
  out["best_codec"] = best
  out["best_codec_bits_per_image"] = out[f"{best}_bits_per_image"]
  out["symbol_histogram"] = np.bincount(symbols.ravel(), minlength=num_centroids).tolist()
  return out


def count_macs(fn: Callable, *example_args) -> float:
  """Multiply-accumulates of `fn` for the example inputs, from XLA's cost analysis (flops / 2)."""
  cost = jax.jit(fn).lower(*example_args).cost_analysis()
  if isinstance(cost, list | tuple):
    cost = cost[0]
  return float(cost.get("flops", 0.0)) / 2.0


@dataclasses.dataclass(frozen=True)
class LatencyModel:
  """Device, link and server speeds.

  Attributes:
    device_clock_hz: MCU clock (STM32F746: 216 MHz Cortex-M7).
    device_macs_per_cycle: sustained int8 MACs per cycle (CMSIS-NN on an M7: ~0.5-1).
    link_bps: uplink bandwidth in bits per second.
    server_macs_per_s: server throughput for the remote part.
    rtt_s: fixed per-request network round-trip overhead.
  """

  device_clock_hz: float = 216e6
  device_macs_per_cycle: float = 0.5
  link_bps: float = 1e6
  server_macs_per_s: float = 1e12
  rtt_s: float = 0.0

  @property
  def device_macs_per_s(self) -> float:
    return self.device_clock_hz * self.device_macs_per_cycle

  def device_s(self, macs: float) -> float:
    return macs / self.device_macs_per_s

  def link_s(self, bits: float) -> float:
    return bits / self.link_bps + self.rtt_s

  def server_s(self, macs: float) -> float:
    return macs / self.server_macs_per_s


def latency_table(
  lm: LatencyModel,
  *,
  device_macs: float,
  device_params: int,
  remote_macs: float,
  remote_params: int,
  payload_bits: float,
  raw_image_bits: float,
) -> list[dict]:
  """Per-image latency of AgileNN and the two baselines (seconds; parameter counts)."""
  rows = []

  def row(name, dev_macs, dev_params, bits, srv_macs):
    d, link, s = lm.device_s(dev_macs), (lm.link_s(bits) if bits else 0.0), lm.server_s(srv_macs)
    rows.append(
      {
        "scheme": name,
        "device_macs": dev_macs,
        "device_params": dev_params,
        "payload_bits": bits,
        "device_s": d,
        "link_s": link,
        "server_s": s,
        "total_s": d + link + s,
      }
    )

  row("AgileNN (device part + coded remote features)", device_macs, device_params, payload_bits, remote_macs)
  row(
    "all on device (device part + remote NN on the MCU)",
    device_macs + remote_macs,
    device_params + remote_params,
    0.0,
    0.0,
  )
  row("raw image offload (uint8 image to the server)", 0.0, 0, raw_image_bits, device_macs + remote_macs)
  return rows
