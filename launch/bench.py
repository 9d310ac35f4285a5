"""Benchmark harness: `python -m launch.bench <technique> [options]`.

Each technique's benchmark lives in `launch/benchmarks/<technique>.py` and defines
`add_args(parser)` and `run(args) -> dict`. The harness writes the returned dict
as JSON to `--out` (default runs/bench/<technique>.json) and prints it. Speed
claims are ratios against a reference measured in the same run, with medians
over repeats (`measure`), never absolute timings in tests.
"""

from __future__ import annotations

import importlib
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

from common.app import TECHNIQUES
from common.cli import ArgumentParser, run_main
from common.export import write_atomic

BENCHMARKS = (*TECHNIQUES, "deploy")
# Further benchmarks inside a technique's module: name -> (module, its add_args, its run).
EXTRA = {
  "branching_parallel": ("branching", "add_parallel_args", "run_parallel"),
  "scaling": ("scaling", "add_args", "run"),  # data parallelism over 1-8 devices
  "serve": ("serve", "add_args", "run"),
  "gpu": (
    "gpu",
    "add_args",
    "run",
  ),  # every technique's step and AgileNN's paper step on any accelerator  # edgeinfer's server (gRPC, HTTP) beside a stock Triton server
}


def machine_info() -> dict[str, Any]:
  import os

  import jax

  from common.xla_cpu import flags_text

  return {
    "python": platform.python_version(),
    "machine": platform.machine(),
    "cpus": os.cpu_count(),
    "jax": jax.__version__,
    "backend": jax.default_backend(),
    "devices": [str(d) for d in jax.devices()],
    "launcher_xla_cpu_options": flags_text(),  # what the commands add to XLA_FLAGS (common/xla_cpu.py)
  }


def main(argv: list[str] | None = None) -> int:
  parser = ArgumentParser(prog="python -m launch.bench", description=__doc__.splitlines()[0])
  parser.add_argument("technique", choices=BENCHMARKS + tuple(EXTRA))
  parser.add_argument("--out", default=None, help="JSON output path")
  args, rest = parser.parse_known_args(argv)
  mod_name, add_name, run_name = EXTRA.get(args.technique, (args.technique, "add_args", "run"))
  mod = importlib.import_module(f"launch.benchmarks.{mod_name}")
  sub = ArgumentParser(prog=f"python -m launch.bench {args.technique}")
  getattr(mod, add_name)(sub)
  sub_args = sub.parse_args(rest)
  t0 = time.time()
  result = {"technique": args.technique, "machine": machine_info(), **getattr(mod, run_name)(sub_args)}
  result["wall_s"] = time.time() - t0
  out = Path(args.out or f"runs/bench/{args.technique}.json")
  write_atomic(out, json.dumps(result, indent=2, default=str).encode())
  print(json.dumps(result, indent=2, default=str))
  print(f"wrote {out}", file=sys.stderr)
  return 0


if __name__ == "__main__":
  run_main(main)
