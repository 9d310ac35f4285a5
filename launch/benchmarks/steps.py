"""Training-step timing for the benchmarks: one step before and after the speed work, in one process.

"reference" is the step with XLA's grouped depthwise convolutions, XLA:CPU's
default options and autodiff's reductions (flax's BatchNorm; traced inside
`common.xla_cpu.autodiff_reductions()`); "fast" is the step as the launchers train it:
shifted depthwise convolutions (`common.mobilenet.DepthwiseConv`),
`common.xla_cpu.CPU_OPTIONS` and the multi-output reductions (`common.batchnorm`, the
depthwise filter gradient); "fast_autodiff_reductions" is "fast" with autodiff's reductions
(the fast step before them). The options are per-executable compiler options,
so both run in the same process (the benchmark harness does not set XLA_FLAGS).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def time_step(step, args: tuple, options: dict, repeats: int, autodiff: bool = False) -> dict[str, Any]:
  """Compiles the jitted `step(state, *rest) -> (state, metrics)` with `options` and times it.

  The state (args[0]) is donated by the step: each call feeds the previous call's state back.
  `autodiff`: traced inside `common.xla_cpu.autodiff_reductions()`.
  """
  import jax

  from common.timing import measure
  from common.xla_cpu import autodiff_reductions

  t0 = time.perf_counter()
  with autodiff_reductions(autodiff):
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


def before_after(make: Callable[[bool], tuple[Any, tuple]], repeats: int) -> dict[str, Any]:
  """`make(shifted_depthwise) -> (jitted step, args)`; the reference step, the fast step with
  autodiff's reductions, the fast step as the launchers train it (CPU_OPTIONS) and the fast step
  under REDUCE_OPTIONS (YNN's reductions kept)."""
  from common.xla_cpu import CPU_OPTIONS, REDUCE_OPTIONS

  ref = time_step(*make(False), {}, repeats, autodiff=True)
  before = time_step(*make(True), CPU_OPTIONS, repeats, autodiff=True)
  fast = time_step(*make(True), CPU_OPTIONS, repeats)
  reduce_ = time_step(*make(True), REDUCE_OPTIONS, repeats)
  median = lambda r: r["step_s"]["median_s"]
  return {
    "reference": ref,
    "fast_autodiff_reductions": before,
    "fast": fast,
    "fast_ynn_reduce": reduce_,
    "speedup": median(ref) / median(fast),
    "multi_output_reductions_speedup": median(before) / median(fast),
    "ynn_reduce_vs_fast": median(fast) / median(reduce_),
    "fast_options": CPU_OPTIONS,
  }
