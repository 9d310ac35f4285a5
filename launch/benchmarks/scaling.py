"""Benchmark of data parallelism: examples/s of every technique's training step on 1, 2, 4, 8 devices.

    python -m launch.bench scaling                          # CPU: 8 simulated devices
    python -m launch.bench scaling --devices 1,8 --techniques common,agile --batch 64

Each device count runs in its own process (the device count is fixed when JAX
starts): on a CPU with `--xla_force_host_platform_device_count=N`, on GPUs with
`CUDA_VISIBLE_DEVICES` set to the first N. Every step is the one its trainer
builds (`common.sharding.jit_step`, see launch/tiny_steps.py) on a tiny model, at
the same global batch for every device count; the median over `--repeats` of
`--steps` steps is timed after a warm-up that compiles.

On a CPU the simulated devices share the same cores, so this measures the cost
of data parallelism (the overhead ratio: time per example on N devices over the
time on 1), not a speed-up. On accelerators `efficiency` = examples/s on N
devices / (N x examples/s on 1) is the real scaling efficiency.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from launch.tiny_steps import BUILDERS


def add_args(parser) -> None:
  parser.add_argument("--devices", default="1,2,4,8", help="device counts, comma separated")
  parser.add_argument("--techniques", default=",".join(BUILDERS), help="steps to time, comma separated")
  parser.add_argument("--batch", type=int, default=64, help="global batch (offload: rows)")
  parser.add_argument("--steps", type=int, default=5, help="steps per timed repeat")
  parser.add_argument("--repeats", type=int, default=3)


def _env(n: int, platform: str) -> dict:
  env = {**os.environ, "PYTHONPATH": os.getcwd()}
  if platform == "cpu":
    env["JAX_PLATFORMS"] = "cpu"
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={n}".strip()
  elif platform == "gpu":
    env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in range(n))
  return env


def run(args) -> dict:
  import jax

  platform = jax.default_backend()
  counts = [int(n) for n in args.devices.split(",")]
  if platform != "cpu" and max(counts) > jax.device_count():
    counts = [n for n in counts if n <= jax.device_count()]
  names = args.techniques.split(",")
  per_count = {}
  for n in counts:
    cmd = [
      sys.executable,
      "-m",
      "launch.benchmarks.scaling",
      str(args.batch),
      str(args.steps),
      str(args.repeats),
    ]
    res = subprocess.run(cmd + names, env=_env(n, platform), capture_output=True, text=True)
    if res.returncode != 0:
      raise RuntimeError(f"scaling worker on {n} devices failed:\n{res.stderr[-3000:]}")
    per_count[n] = json.loads(res.stdout.strip().splitlines()[-1])
  base = counts[0]
  table = {}
  for name in names:
    rows = []
    for n in counts:
      r = per_count[n][name]
      b = per_count[base][name]["examples_per_s"]
      rows.append(
        {
          "devices": n,
          "examples_per_s": r["examples_per_s"],
          "median_step_s": r["median_s"] / args.steps,
          # time per example on n devices over the time on `base` devices (CPU: the overhead)
          "overhead_ratio": b / r["examples_per_s"],
          "efficiency": r["examples_per_s"] / (b * n / base),
        }
      )
    table[name] = rows
  return {"platform": platform, "batch": args.batch, "steps": args.steps, "results": table}


def _worker(batch: int, steps: int, repeats: int, names: list[str]) -> dict:
  import jax

  from common.timing import measure

  out = {}
  for name in names:
    step, args, _ = BUILDERS[name](batch)
    state = [args[0]]

    def go(step=step, args=args, state=state):
      for _ in range(steps):
        state[0], metrics = step(state[0], *args[1:])
      jax.block_until_ready((state[0], metrics))

    t = measure(go, repeats=repeats, warmup=1)
    out[name] = {"median_s": t["median_s"], "examples_per_s": batch * steps / t["median_s"]}
  out["devices"] = jax.device_count()
  return out


if __name__ == "__main__":
  b, s, r, *techniques = sys.argv[1:]
  print(json.dumps(_worker(int(b), int(s), int(r), techniques)))
