"""Training-step timing for the benchmarks: one step before and after the speed work, in one process.

"reference" is the step with XLA's grouped depthwise convolutions and XLA:CPU's
default options; "fast" is the step as the launchers train it: shifted
depthwise convolutions (`common.mobilenet.DepthwiseConv`) and the technique's
`common.xla_cpu.cpu_options`. The options are per-executable compiler options,
so both run in the same process (the benchmark harness does not set XLA_FLAGS).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def time_step(step, args: tuple, options: dict, repeats: int) -> dict[str, Any]:
  """Compiles the jitted `step(state, *rest) -> (state, metrics)` with `options` and times it.

  The state (args[0]) is donated by the step: each call feeds the previous call's state back.
  """
  import jax

  from launch.bench import measure

  t0 = time.perf_counter()
  compiled = step.lower(*args).compile(options)
  compile_s = time.perf_counter() - t0
  holder = [args[0]]

  def one():
    out = compiled(holder[0], *args[1:])
    holder[0] = out[0]
    jax.block_until_ready(out[1])

  t = measure(one, repeats=repeats, warmup=1)
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list | tuple) else cost
  flops = float(cost.get("flops", 0.0))
  return {"step_s": t, "compile_s": compile_s, "step_flops": flops, "flops_per_s": flops / t["median_s"]}


def before_after(make: Callable[[bool], tuple[Any, tuple]], repeats: int, technique: str) -> dict[str, Any]:
  """`make(shifted_depthwise) -> (jitted step, args)`; the reference step, the fast step under both
  option sets (YNN's reductions kept, CPU_OPTIONS; YNN fusion off entirely, YNN_OFF_OPTIONS), and
  "fast" as `technique`'s launcher runs it (`common.xla_cpu.cpu_options`)."""
  from common.xla_cpu import CPU_OPTIONS, YNN_OFF_OPTIONS, cpu_options

  ref = time_step(*make(False), {}, repeats)
  reduce_ = time_step(*make(True), CPU_OPTIONS, repeats)
  ynn_off = time_step(*make(True), YNN_OFF_OPTIONS, repeats)
  options = cpu_options(technique)
  fast = reduce_ if options == CPU_OPTIONS else ynn_off
  median = lambda r: r["step_s"]["median_s"]
  return {
    "reference": ref,
    "fast": fast,
    "fast_ynn_reduce": reduce_,
    "fast_ynn_off": ynn_off,
    "speedup": median(ref) / median(fast),
    "ynn_reduce_vs_ynn_off": median(ynn_off) / median(reduce_),
    "fast_options": options,
  }
