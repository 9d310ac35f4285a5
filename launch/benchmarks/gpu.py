"""The accelerator check: `python -m launch.bench gpu` on whatever JAX finds (GPU, TPU or CPU).

Every technique's training step (`launch.tiny_steps.BUILDERS`: each trainer's step on a small model,
built with `common.sharding.jit_step` as the trainers build it) timed for a few steps, and AgileNN's
paper-shaped step (batch 64, 96x96, 100 classes, the EfficientNetV2-S evaluator; the `fast` option
set of `python -m launch.bench agile`), each with its compiled program's memory (XLA's
`memory_analysis`: arguments + temporaries + outputs) and the device's peak memory in use where
the device reports it (`jax.Device.memory_stats`; the process's peak resident set on a CPU).
Meant to fit in a few minutes of a lent accelerator; the figures go in docs/scaling.md with the
device's name.
"""

from __future__ import annotations

import argparse
import time


def add_args(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--steps", type=int, default=5, help="timed steps of each technique's step")
  parser.add_argument("--batch", type=int, default=64, help="global batch of the techniques' steps")
  parser.add_argument("--agile_batch", type=int, default=64, help="AgileNN's paper-shaped step (0: skip)")
  parser.add_argument("--agile_input_size", type=int, default=96)
  parser.add_argument("--agile_repeats", type=int, default=3)


def device_peak_bytes() -> dict:
  """The first device's peak bytes in use (accelerators), else this process's peak resident set."""
  import resource

  import jax

  stats = jax.devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    return {"device_peak_bytes": int(stats["peak_bytes_in_use"])}
  return {"process_peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def technique_steps(batch: int, steps: int) -> dict:
  """Each technique's step: compile-and-first-step seconds, median step seconds, compiled bytes."""
  import jax

  from common import profile
  from common.timing import measure
  from launch.tiny_steps import BUILDERS, copy

  out = {}
  for name, build in BUILDERS.items():
    step, args, _ = build(batch)
    t0 = time.perf_counter()
    jax.block_until_ready(step(*copy(args)))
    first = time.perf_counter() - t0
    t = measure(
      lambda step=step, args=args: jax.block_until_ready(step(*copy(args))), repeats=steps, warmup=1
    )
    lowered = getattr(step, "lower", None)
    mem = profile.compiled_bytes(lowered(*args).compile()) if lowered is not None else None
    out[name] = {"first_step_s": first, "step_s": t["median_s"], "compiled_bytes": mem}
  return out


def agile_paper_step(batch: int, input_size: int, repeats: int) -> dict:
  """AgileNN's paper-shaped step (the `fast` option set), as `python -m launch.bench agile` times it."""
  import jax

  from common import profile
  from common.timing import measure
  from launch.benchmarks import agile

  parser = argparse.ArgumentParser()
  agile.add_args(parser)
  a = parser.parse_args([f"--batch={batch}", f"--input_size={input_size}", f"--repeats={repeats}"])
  s = agile.setup(a)
  t0 = time.perf_counter()
  compiled, state, ev, _ = agile.full_step(s, "fast", a)
  compile_s = time.perf_counter() - t0
  holder = {"s": state}

  def one():
    holder["s"], m = compiled(holder["s"], s["batch"], jax.random.key(1), s["hp"], ev)
    jax.block_until_ready(m)

  t = measure(one, repeats=repeats, warmup=1)
  return {"batch": batch, "input_size": input_size, "compile_s": compile_s, "step_s": t,
          "compiled_bytes": profile.compiled_bytes(compiled)}  # fmt: skip


def run(args) -> dict:
  import jax

  out = {"devices": [str(d) for d in jax.devices()], "device_kind": jax.devices()[0].device_kind}
  out["techniques"] = technique_steps(args.batch, args.steps)
  if args.agile_batch:
    out["agile_paper_step"] = agile_paper_step(args.agile_batch, args.agile_input_size, args.agile_repeats)
  out.update(device_peak_bytes())
  return out
