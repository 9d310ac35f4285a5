"""XLA:CPU options the launchers set (jaxlib 0.10.2), measured by `python -m launch.bench <technique>`.

`CPU_OPTIONS` (`--xla_cpu_experimental_ynn_fusion_type=`, YNN fusion off) is what every
command sets: XLA:CPU's own (Eigen) kernels run the convolutions and dots, whose filter
gradients run several times slower under YNN fusion (the default). With YNN fusion off, XLA's
own emitter runs the reductions; a reduction over batch and space per sum, as autodiff writes
BatchNorm and the shifted depthwise filter gradient, is slow there, so the trained code computes
those as multi-output reductions over space (`common.batchnorm`, `common.mobilenet`), which it
runs fast. `autodiff_reductions()` traces the autodiff form instead (the benchmarks' reference
rows). `REDUCE_OPTIONS` (`LIBRARY_FUSION_TYPE_REDUCE`) keeps YNN for the remaining reductions:
on AgileNN's paper-shaped step 0.84-0.96x, on its CE-only step 0.88-1.14x (two runs,
docs/agile.md; subnets' step 1.22x, branching's 1.11x), so it stays an opt-in:
`XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_REDUCE` (a value already
in XLA_FLAGS is kept).

Every command (`common.app.run`, so `edgeinfer <technique>` and `python -m <technique>.main`,
and `launch.train`, `launch.quickstart`) calls `set_cpu_flags()` before JAX starts its backend;
tests do not, so they run XLA's defaults. The benchmarks compare the option sets in one process
by passing them as per-executable compiler options (`jit(f).lower(...).compile(options)`).
"""

from __future__ import annotations

import contextlib
import os

CPU_OPTIONS: dict[str, str] = {"xla_cpu_experimental_ynn_fusion_type": ""}  # YNN fusion off
REDUCE_OPTIONS: dict[str, str] = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_REDUCE"}


def flags_text(options: dict[str, str] = CPU_OPTIONS) -> str:
  return " ".join(f"--{k}={v}" for k, v in options.items())


def set_cpu_flags(environ=os.environ) -> None:
  """Adds CPU_OPTIONS to XLA_FLAGS (an option already there is left as the user set it)."""
  current = environ.get("XLA_FLAGS", "")
  extra = [f"--{k}={v}" for k, v in CPU_OPTIONS.items() if f"--{k}=" not in current]
  if extra:
    environ["XLA_FLAGS"] = " ".join([current, *extra]).strip()


_FUSED_REDUCTIONS = [True]


def fused_reductions() -> bool:
  """Whether `common.mobilenet.depthwise_conv` and `common.batchnorm.BatchNorm` trace their
  multi-output reductions (the default) or plain autodiff (inside `autodiff_reductions()`)."""
  return _FUSED_REDUCTIONS[-1]


@contextlib.contextmanager
def autodiff_reductions(enabled: bool = True):
  """Within it, functions traced use autodiff's per-sum reductions for the depthwise filter
  gradient and for BatchNorm (flax's code): the slower form the benchmarks time as a reference.
  Read at trace time, so it applies to what is traced (jitted) inside the block; JAX's caches are
  cleared on entry and exit, so no trace made on one side of it is reused on the other.
  `enabled=False`: does nothing (the benchmarks pass each variant's flag)."""
  import jax

  if not enabled:
    yield
    return

  jax.clear_caches()
  _FUSED_REDUCTIONS.append(False)
  try:
    yield
  finally:
    _FUSED_REDUCTIONS.pop()
    jax.clear_caches()


def _conditional_identity(x, pred):
  import jax

  return jax.lax.cond(pred, lambda v: v, lambda v: v * 1.0, x)  # v * 1.0 == v for every float


def fusion_boundary(x, pred):
  """`x` unchanged, as a buffer of its own on XLA:CPU (the identity elsewhere).

  XLA:CPU removes `optimization_barrier` before fusion, and its fusion passes copy a
  cheap producer into every consumer: for the shifted depthwise conv's taps that means a
  cotangent read through 9 shifted pads recomputes the 9-tap forward sum per tap, 81 slices
  per element in the evaluator's grad-of-grad (profiled in docs/agile.md). Passing the value
  through a conditional on a runtime predicate, both branches the identity, makes it a
  buffer the fusions read, in every pass: the conditional's JVP and transpose are
  conditionals too. `pred` is any traced boolean (its value does not matter: both
  branches return `x`); it must not be a constant, which XLA would fold. (jax is imported
  here: the launchers import this module to set XLA_FLAGS before JAX starts.)
  """
  import jax

  return jax.lax.platform_dependent(x, pred, cpu=_conditional_identity, default=lambda v, _: v)
