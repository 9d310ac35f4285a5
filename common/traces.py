"""Bandwidth traces: seeded synthetic generators and loaders for Mahimahi and CSV files.

A trace is piecewise constant: `rates_bps[i]` holds on [times_s[i], times_s[i+1]) and the
last rate holds for `period_s - times_s[-1]`; past `period_s` the trace repeats.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np

from common import safeio
from common.errors import ConfigError, DataError

MTU_BITS = 1500 * 8


@dataclasses.dataclass(frozen=True)
class Trace:
  name: str
  times_s: np.ndarray
  rates_bps: np.ndarray
  period_s: float

  def __post_init__(self):
    t, r = np.asarray(self.times_s, float), np.asarray(self.rates_bps, float)
    if t.ndim != 1 or t.shape != r.shape or t.size == 0:
      raise DataError(f"trace {self.name!r}: times and rates must be equal-length, non-empty 1-D arrays")
    if t[0] != 0.0 or np.any(np.diff(t) <= 0) or self.period_s <= t[-1]:
      raise DataError(
        f"trace {self.name!r}: times must start at 0, increase strictly and end before the period"
      )
    if np.any(~np.isfinite(r)) or np.any(r < 0) or r.max() <= 0:
      raise DataError(f"trace {self.name!r}: rates must be finite, >= 0 and not all zero")

  def segments(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(start, end, rate) of each piece of one period."""
    ends = np.append(self.times_s[1:], self.period_s)
    return self.times_s, ends, self.rates_bps

  def transfer_end(self, start_s: float, bits: float) -> float:
    """When `bits` sent from `start_s` have all arrived."""
    starts, ends, rates = self.segments()
    per_period = float(np.sum((ends - starts) * rates))
    t = float(start_s)
    remaining = float(bits)
    base = math.floor(t / self.period_s) * self.period_s
    full = math.floor(remaining / per_period) if per_period > 0 else 0
    if full > 1:  # skip whole periods
      remaining -= (full - 1) * per_period
      t += (full - 1) * self.period_s
      base += (full - 1) * self.period_s
    while True:
      local = t - base
      i = int(np.searchsorted(starts, local, side="right") - 1)
      while i < len(starts):
        seg_end = ends[i]
        cap = (seg_end - local) * rates[i]
        if cap >= remaining and rates[i] > 0:
          return base + local + remaining / rates[i]
        remaining -= cap
        local = seg_end
        i += 1
      base += self.period_s
      t = base

  def bits_between(self, start_s: float, until_s: float) -> float:
    """Bits the link delivers between start_s and until_s (the integral of the piecewise rate)."""
    if until_s <= start_s:
      return 0.0
    starts, ends, rates = self.segments()
    total, t = 0.0, float(start_s)
    while t < until_s:
      local = t % self.period_s
      base = t - local
      i = int(np.searchsorted(starts, local, side="right") - 1)
      seg_end = min(base + ends[i], until_s)
      total += (seg_end - t) * rates[i]
      t = seg_end if seg_end > t else t + 1e-12
    return total

  def rate_at(self, t_s: float) -> float:
    local = t_s % self.period_s
    return float(self.rates_bps[int(np.searchsorted(self.times_s, local, side="right") - 1)])

  def mean_bps(self) -> float:
    starts, ends, rates = self.segments()
    return float(np.sum((ends - starts) * rates) / self.period_s)


# ---------------------------------------------------------------- synthetic


def _check(name, value, lo):
  if not value > lo:
    raise ConfigError(f"{name} = {value}: must be > {lo}")


def markov(seed: int, seconds: float = 120.0, *, levels_mbps=(1.0, 4.0, 12.0), stay=0.9, step_s=0.5) -> Trace:
  """Markov-modulated: a chain over bandwidth levels, staying with probability `stay` per step."""
  _check("seconds", seconds, 0)
  rng = np.random.default_rng(seed)
  n = max(1, int(seconds / step_s))
  state = int(rng.integers(len(levels_mbps)))
  rates = []
  for _ in range(n):
    if rng.random() > stay:
      state = int(rng.choice([s for s in range(len(levels_mbps)) if s != state] or [state]))
    rates.append(levels_mbps[state] * 1e6 * rng.uniform(0.85, 1.15))
  return Trace(f"markov{seed}", np.arange(n) * step_s, np.asarray(rates), n * step_s)


def random_walk(
  seed: int, seconds: float = 120.0, *, start_mbps=5.0, sigma=0.15, lo_mbps=0.5, hi_mbps=25.0, step_s=0.2
) -> Trace:
  """A random walk of log-bandwidth, clipped to [lo, hi]."""
  _check("seconds", seconds, 0)
  rng = np.random.default_rng(seed)
  n = max(1, int(seconds / step_s))
  logs = np.log(start_mbps) + np.cumsum(rng.normal(0.0, sigma, n))
  rates = np.clip(np.exp(logs), lo_mbps, hi_mbps) * 1e6
  return Trace(f"random_walk{seed}", np.arange(n) * step_s, rates, n * step_s)


def step(seed: int, seconds: float = 120.0, *, levels_mbps=(0.8, 3.0, 10.0, 20.0), hold_s=10.0) -> Trace:
  """Step changes: a new level drawn every `hold_s` seconds."""
  _check("seconds", seconds, 0)
  rng = np.random.default_rng(seed)
  n = max(1, int(math.ceil(seconds / hold_s)))
  rates = np.asarray(levels_mbps)[rng.integers(len(levels_mbps), size=n)] * 1e6
  return Trace(f"step{seed}", np.arange(n) * hold_s, rates, n * hold_s)


GENERATORS = {"markov": markov, "random_walk": random_walk, "step": step}


def synthetic(kind: str, seed: int, seconds: float = 120.0) -> Trace:
  if kind not in GENERATORS:
    raise ConfigError(f"trace kind {kind!r}: must be one of {sorted(GENERATORS)} or a file path")
  return GENERATORS[kind](seed, seconds)


# ---------------------------------------------------------------- files


MAX_TRACE_S = 86_400  # a longer trace file is refused (a typo'd timestamp would allocate its bins)


def _check_length(path: Path, seconds: float) -> None:
  if seconds > MAX_TRACE_S:
    raise DataError(f"{path}: the trace lasts {seconds:.3g} s; at most {MAX_TRACE_S} s (one day) is read")


def load_mahimahi(path: str | Path, *, bin_ms: int = 100) -> Trace:
  """A Mahimahi packet-delivery trace: one integer millisecond per line, each line one
  1500-byte delivery opportunity, non-decreasing; binned to `bin_ms` rates. The trace repeats
  every last-timestamp milliseconds, as Mahimahi replays it, so the bits per period are exactly
  1500 bytes per line (the last bin is shorter when the period is not a multiple of `bin_ms`)."""
  path = Path(path)
  if not path.exists():
    raise DataError(f"trace file {path} does not exist")
  stamps = []
  for n, line in enumerate(safeio.read_text(path, what="trace file").splitlines(), 1):
    s = line.strip()
    if not s:
      continue
    v = safeio.parse_decimal_int(s)
    if v is None or v < 0:
      raise DataError(
        f"{path}:{n}: {safeio.quote(s, 60)} is not a non-negative integer millisecond (Mahimahi format)"
      )
    if stamps and v < stamps[-1]:
      raise DataError(f"{path}:{n}: timestamp {v} ms goes back in time (previous {stamps[-1]} ms)")
    stamps.append(v)
  if not stamps:
    raise DataError(f"{path}: no delivery timestamps; a Mahimahi trace has one integer ms per line")
  if stamps[-1] == 0:  # Mahimahi replays the file every last-timestamp ms, and refuses a 0-ms one
    raise DataError(f"{path}: every timestamp is 0 ms; a Mahimahi trace must last a nonzero time")
  period_ms = stamps[-1]
  _check_length(path, period_ms / 1000)
  nbins = int(math.ceil(period_ms / bin_ms))
  counts = np.bincount(np.minimum(np.asarray(stamps) // bin_ms, nbins - 1), minlength=nbins)
  starts_ms = np.arange(nbins) * bin_ms
  lengths_ms = np.minimum(starts_ms + bin_ms, period_ms) - starts_ms  # the last bin ends at the period
  rates = counts * MTU_BITS / (lengths_ms / 1000.0)
  if rates.max() <= 0:
    raise DataError(f"{path}: the trace delivers nothing")
  return Trace(path.stem, starts_ms / 1000.0, rates.astype(float), period_ms / 1000.0)


def load_csv(path: str | Path) -> Trace:
  """Two columns, time in seconds and bandwidth in Mbit/s (an optional header line); the
  times increase strictly from 0 and the last row's duration is the mean step."""
  path = Path(path)
  if not path.exists():
    raise DataError(f"trace file {path} does not exist")
  times, rates = [], []
  for n, line in enumerate(safeio.read_text(path, what="trace file").splitlines(), 1):
    s = line.strip()
    if not s or s.startswith("#"):
      continue
    parts = [p.strip() for p in s.replace(";", ",").split(",")]
    if len(parts) != 2:
      raise DataError(
        f"{path}:{n}: expected 2 columns (time_s, mbps), got {len(parts)}: {safeio.quote(s, 80)}"
      )
    try:
      t, r = float(parts[0]), float(parts[1])
    except ValueError:
      if n == 1 and not times:
        continue  # header
      raise DataError(f"{path}:{n}: not numbers: {safeio.quote(s, 80)}") from None
    if not (math.isfinite(t) and math.isfinite(r)) or r < 0:
      raise DataError(
        f"{path}:{n}: time and bandwidth must be finite and bandwidth >= 0: {safeio.quote(s, 80)}"
      )
    if times and t <= times[-1]:
      raise DataError(f"{path}:{n}: time {t} does not increase (previous {times[-1]})")
    times.append(t)
    rates.append(r * 1e6)
  if len(times) < 2:
    raise DataError(f"{path}: a CSV trace needs at least 2 rows of (time_s, mbps)")
  _check_length(path, times[-1] - times[0])
  if max(rates) <= 0:
    raise DataError(f"{path}: zero capacity throughout (every bandwidth is 0); a link must deliver something")
  t = np.asarray(times) - times[0]
  step_s = float(np.mean(np.diff(t)))
  return Trace(path.stem, t, np.asarray(rates), float(t[-1] + step_s))


def load(spec: str, *, seed: int = 0, seconds: float = 120.0) -> Trace:
  """A synthetic kind name, or a file path (.csv as CSV, anything else as Mahimahi)."""
  if spec in GENERATORS:
    return synthetic(spec, seed, seconds)
  p = Path(spec)
  return load_csv(p) if p.suffix.lower() == ".csv" else load_mahimahi(p)


def shifted(trace: Trace, *, start_s: float = 0.0, scale: float = 1.0) -> Trace:
  """`trace` as a stream starting `start_s` seconds into it sees it (the period wraps around),
  its rates multiplied by `scale`; the trace itself when neither changes it."""
  if start_s < 0 or not scale > 0:
    raise ConfigError(f"trace start {start_s} s and scale {scale}: must be >= 0 and > 0")
  start = float(start_s) % trace.period_s
  if start == 0.0 and scale == 1.0:
    return trace
  starts, ends, rates = trace.segments()
  after = ends > start
  times = np.concatenate(
    [np.maximum(starts[after], start) - start, starts[starts < start] + trace.period_s - start]
  )
  new_rates = np.concatenate([rates[after], rates[starts < start]]) * scale
  keep = np.append(True, np.diff(times) > 0)
  name = trace.name + (f"@{start_s:g}s" if start else "") + (f"x{scale:g}" if scale != 1.0 else "")
  return Trace(name, times[keep], new_rates[keep], trace.period_s)
