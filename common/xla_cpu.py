"""XLA:CPU options the launchers set (jaxlib 0.10.2), measured by `python -m launch.bench agile`.

`--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_REDUCE` keeps the YNNPACK
fusions of reductions only, so XLA:CPU's own (Eigen) kernels run the convolutions and dots.
Both halves matter on this 2-core machine: with YNN fusion on everywhere (the default) the
filter gradients of a 3x3 and a 1x1 conv ran 4.6x and 6.3x slower than Eigen's (under load),
and with YNN fusion off entirely (`YNN_OFF_OPTIONS`, the launchers' option before) a
reduction over batch and space, which every training BatchNorm and every shifted depthwise
filter gradient is, ran about 25x slower than YNN's (21 ms against 0.8 ms for
64x32x32x96 -> 96). `python -m launch.bench agile --ops_only` times single ops of the
evaluator's shapes under the three settings; the benchmarks time each training step under
all three in one process (docs/agile.md has the step-level figures).
Every command (`common.app.run`, so `edgeinfer <technique>` and `python -m <technique>.main`, and
`launch.train`, `launch.quickstart`) calls `set_cpu_flags()` before JAX starts its backend; tests do not, so they run
XLA's defaults. The benchmarks compare them in one process by passing the options as
per-executable compiler options (`jit(f).lower(...).compile(CPU_OPTIONS)`).
"""

from __future__ import annotations

import os

CPU_OPTIONS: dict[str, str] = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_REDUCE"}
YNN_OFF_OPTIONS: dict[str, str] = {"xla_cpu_experimental_ynn_fusion_type": ""}  # before: YNN fusion off


def flags_text(options: dict[str, str] = CPU_OPTIONS) -> str:
  return " ".join(f"--{k}={v}" for k, v in options.items())


def set_cpu_flags(environ=os.environ) -> None:
  """Adds CPU_OPTIONS to XLA_FLAGS (an option already there is left as the user set it)."""
  current = environ.get("XLA_FLAGS", "")
  extra = [f"--{k}={v}" for k, v in CPU_OPTIONS.items() if f"--{k}=" not in current]
  if extra:
    environ["XLA_FLAGS"] = " ".join([current, *extra]).strip()


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
