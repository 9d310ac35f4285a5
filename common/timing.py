"""Wall-clock timing of a callable: the one timer of the benchmarks and the branching measurements.

  measure(fn, repeats=5, warmup=1)   # {"median_s", "min_s", "p90_s", "mean_s", "repeats"}
  median_ms(fn, repeats=50)          # the median in milliseconds

`fn()` must block until its result is ready (e.g. with `jax.block_until_ready`).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any


def measure(fn: Callable[[], Any], *, repeats: int = 5, warmup: int = 1) -> dict[str, float]:
  """Times `fn()` `repeats` times after `warmup` untimed calls: median / min / p90 / mean seconds."""
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  times.sort()
  return {
    "median_s": statistics.median(times),
    "min_s": times[0],
    "p90_s": times[min(len(times) - 1, int(0.9 * len(times)))],
    "mean_s": statistics.fmean(times),
    "repeats": repeats,
  }


def median_ms(fn: Callable[[], Any], *, repeats: int = 50, warmup: int = 5) -> float:
  """The median wall milliseconds of `fn()`."""
  return measure(fn, repeats=repeats, warmup=warmup)["median_s"] * 1e3
