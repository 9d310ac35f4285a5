"""XLA:CPU options the launchers set (jaxlib 0.10.2), measured by `python -m launch.bench <technique>`.

`--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_REDUCE` (`CPU_OPTIONS`) keeps the
YNNPACK fusions of reductions only, so XLA:CPU's own (Eigen) kernels run the convolutions and
dots. Both halves matter for AgileNN and RTCoInfer on this 2-core machine: with YNN fusion on
everywhere (the default) the convolutions' filter gradients run several times slower than
Eigen's, and with YNN fusion off entirely (`YNN_OFF_OPTIONS`, the launchers' option before)
every reduction over batch and space (each training BatchNorm's statistics, each shifted
depthwise filter gradient) runs many times slower than YNN's (`python -m launch.bench agile
--ops_only` times single ops under the three settings). The training steps of REDS and
NN-Stretch ran faster with YNN fusion off entirely (`python -m launch.bench subnets` /
`branching`, `train_step`), so those keep it (`TECHNIQUE_OPTIONS`), and offload, not
re-measured, keeps the previous option. docs/agile.md has the step-level figures.

Every command calls `set_cpu_flags(technique=...)` before JAX starts its backend
(`common.app.run`, so `edgeinfer <technique>` and `python -m <technique>.main`, and
`launch.train`); `launch.quickstart` runs every stage in one process with `CPU_OPTIONS`. Tests
do not, so they run XLA's defaults. The benchmarks compare the option sets in one process by
passing them as per-executable compiler options (`jit(f).lower(...).compile(options)`).
"""

from __future__ import annotations

import os

CPU_OPTIONS: dict[str, str] = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_REDUCE"}
YNN_OFF_OPTIONS: dict[str, str] = {"xla_cpu_experimental_ynn_fusion_type": ""}  # YNN fusion off entirely
TECHNIQUE_OPTIONS: dict[str, dict[str, str]] = {
  "subnets": YNN_OFF_OPTIONS,
  "branching": YNN_OFF_OPTIONS,
  "offload": YNN_OFF_OPTIONS,
}


def cpu_options(technique: str | None = None) -> dict[str, str]:
  """The XLA:CPU options the launchers use for `technique` (CPU_OPTIONS unless listed)."""
  return TECHNIQUE_OPTIONS.get(technique or "", CPU_OPTIONS)


def flags_text(options: dict[str, str] = CPU_OPTIONS) -> str:
  return " ".join(f"--{k}={v}" for k, v in options.items())


def set_cpu_flags(environ=os.environ, technique: str | None = None) -> None:
  """Adds `cpu_options(technique)` to XLA_FLAGS (an option already there is left as the user set it)."""
  current = environ.get("XLA_FLAGS", "")
  extra = [f"--{k}={v}" for k, v in cpu_options(technique).items() if f"--{k}=" not in current]
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
