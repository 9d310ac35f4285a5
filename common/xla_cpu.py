"""XLA:CPU options the launchers set (jaxlib 0.10.2), measured by `python -m launch.bench agile`.

`--xla_cpu_experimental_ynn_fusion_type=` (an empty list) turns the YNNPACK
fusions of convolutions and dots off, so XLA:CPU's own (Eigen) kernels run
them. `python -m launch.bench agile --ops_only` times single ops of the
evaluator's shapes both ways: on this 2-core machine under load the filter
gradients of a 3x3 and a 1x1 conv ran 4.6x and 6.3x faster without YNN fusion
and a 3x3 conv's input gradient 1.8x (docs/agile.md has the step-level figures).
Every command (`common.app.run`, so `edgeinfer <technique>` and `python -m <technique>.main`, and
`launch.train`, `launch.quickstart`) calls `set_cpu_flags()` before JAX starts its backend; tests do not, so they run
XLA's defaults. The benchmarks compare both in one process by passing
`CPU_OPTIONS` as per-executable compiler options (`jit(f).lower(...).compile(CPU_OPTIONS)`).
"""

from __future__ import annotations

import os

CPU_OPTIONS: dict[str, str] = {"xla_cpu_experimental_ynn_fusion_type": ""}


def flags_text(options: dict[str, str] = CPU_OPTIONS) -> str:
  return " ".join(f"--{k}={v}" for k, v in options.items())


def set_cpu_flags(environ=os.environ) -> None:
  """Adds CPU_OPTIONS to XLA_FLAGS (an option already there is left as the user set it)."""
  current = environ.get("XLA_FLAGS", "")
  extra = [f"--{k}={v}" for k, v in CPU_OPTIONS.items() if f"--{k}=" not in current]
  if extra:
    environ["XLA_FLAGS"] = " ".join([current, *extra]).strip()
