"""Peak memory of one AgileNN training step, in a process of its own (`launch.bench agile` runs it).

    python -m launch.benchmarks.agile_memory --variant fast [--batch 64 ...]   # prints one JSON line

The child builds the benchmark's step (`launch.benchmarks.agile.setup` / `full_step`) and compiles
it, then resets the kernel's resident-set high-water mark (`/proc/self/clear_refs`, Linux) and runs
1 + `--steps` steps: `peak_rss_step_bytes` is the resident set's peak over those steps (the
process's whole resident set: Python, the runtime, the compiled program, the state and the step's
buffers, which XLA:CPU's allocator keeps after the first step), `step_transient_bytes` its rise
over the resident set just before the first step. XLA's own accounting of the compiled program
(`common.profile.compiled_bytes`: arguments + temporaries + outputs) is reported beside it, and
the peak before the reset (compilation included). (`getrusage`'s ru_maxrss is not used: a child
started by fork + exec inherits its parent's peak there.)
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

STATUS = Path("/proc/self/status")
CLEAR_REFS = Path("/proc/self/clear_refs")


def status_bytes(key: str) -> int | None:
  """A `VmRSS`/`VmHWM` line of /proc/self/status in bytes (None off Linux)."""
  if not STATUS.exists():
    return None
  for line in STATUS.read_text().splitlines():
    if line.startswith(f"{key}:"):
      return int(line.split()[1]) * 1024
  return None


def reset_peak() -> bool:
  """Resets the resident set's high-water mark to the current resident set (Linux >= 4.0)."""
  try:
    CLEAR_REFS.write_text("5")
  except OSError:
    return False
  return True


def measure_in_this_process(args) -> dict:
  import jax

  from common import profile
  from launch.benchmarks import agile

  s = agile.setup(args)
  compiled, state, ev, _ = agile.full_step(s, args.variant, args)
  holder = {"s": state}

  def one():
    holder["s"], m = compiled(holder["s"], s["batch"], jax.random.key(1), s["hp"], ev)
    jax.block_until_ready(m)

  with_compile = status_bytes("VmHWM")
  before = status_bytes("VmRSS")
  reset = reset_peak()
  for _ in range(1 + args.steps):
    one()
  peak = status_bytes("VmHWM") if reset else None
  return {
    "variant": args.variant,
    "steps": 1 + args.steps,
    "rss_before_first_step_bytes": before,
    "peak_rss_step_bytes": peak,
    "step_transient_bytes": None if peak is None or before is None else peak - before,
    "peak_rss_with_compile_bytes": with_compile,
    "compiled_bytes": profile.compiled_bytes(compiled),
  }


def measure_in_child(args, variant: str, steps: int = 2, timeout_s: float = 1800) -> dict:
  """Runs this module for `variant` with the benchmark's shape arguments; its JSON result."""
  argv = [sys.executable, "-m", "launch.benchmarks.agile_memory", "--variant", variant, "--steps", str(steps)]
  for key in ("batch", "input_size", "num_classes", "reference", "ig_steps"):
    argv += [f"--{key}", str(getattr(args, key))]
  done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=False)
  if done.returncode != 0:
    return {"variant": variant, "error": done.stderr.strip().splitlines()[-1:] or ["exit status"]}
  return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
  from common.cli import ArgumentParser
  from launch.benchmarks import agile

  parser = ArgumentParser(
    prog="python -m launch.benchmarks.agile_memory", description=__doc__.splitlines()[0]
  )
  agile.add_args(parser)
  parser.add_argument("--variant", default="fast", choices=agile.VARIANTS)
  parser.add_argument("--steps", type=int, default=2)
  args = parser.parse_args(argv)
  print(json.dumps(measure_in_this_process(args)))
  return 0


if __name__ == "__main__":
  from common.cli import run_main

  run_main(main)
