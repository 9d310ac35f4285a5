"""Wall-clock timing of a callable: the one timer of the benchmarks and the branching measurements.

  measure(fn, repeats=5, warmup=1)   # {"median_s", "min_s", "p90_s", "max_s", "mean_s", "repeats"}
  median_ms(fn, repeats=50)          # the median in milliseconds
  measure_interleaved({"a": fa, "b": fb}, repeats=5)  # A/B: one call of each per round, in turn
  matmul_peak(2048, repeats=5, options={})  # this machine's float32 matmul rate (JAX), the benchmarks' peak

`fn()` must block until its result is ready (e.g. with `jax.block_until_ready`).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any


def measure(fn: Callable[[], Any], *, repeats: int = 5, warmup: int = 1) -> dict[str, float]:
  """Times `fn()` `repeats` times after `warmup` untimed calls: median / min / p90 / max / mean seconds."""
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return _summary(times)


def _summary(times: list[float]) -> dict[str, float]:
  times = sorted(times)
  return {
    "median_s": statistics.median(times),
    "min_s": times[0],
    "p90_s": times[min(len(times) - 1, int(0.9 * len(times)))],
    "max_s": times[-1],
    "mean_s": statistics.fmean(times),
    "repeats": len(times),
  }


def measure_interleaved(
  fns: dict[str, Callable[[], Any]], *, repeats: int = 5, warmup: int = 1
) -> dict[str, dict[str, float]]:
  """`measure` for several callables at once, one call of each per round in turn (A/B on a
  shared, loaded machine: a burst of load falls on every variant alike). Returns name -> summary."""
  for _ in range(warmup):
    for fn in fns.values():
      fn()
  times: dict[str, list[float]] = {k: [] for k in fns}
  for _ in range(repeats):
    for k, fn in fns.items():
      t0 = time.perf_counter()
      fn()
      times[k].append(time.perf_counter() - t0)
  return {k: _summary(v) for k, v in times.items()}


def matmul_peak(n: int, repeats: int, options: dict) -> dict:
  """A jitted [n, n] @ [n, n] float32 matmul compiled with `options`: its median seconds and its rate
  at the fastest call (`flops_per_s`), the peak that benchmarks divide their FLOP rates by."""
  import jax
  import jax.numpy as jnp

  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
  mm = jax.jit(jnp.matmul).lower(a, b).compile(options)
  t = measure(lambda: jax.block_until_ready(mm(a, b)), repeats=max(repeats, 5), warmup=2)
  return {"n": n, "median_s": t["median_s"], "flops_per_s": 2 * n**3 / t["min_s"]}


def median_ms(fn: Callable[[], Any], *, repeats: int = 50, warmup: int = 5) -> float:
  """The median wall milliseconds of `fn()`."""
  return measure(fn, repeats=repeats, warmup=warmup)["median_s"] * 1e3
