"""Run any technique's `main` on CPU, one GPU, a TPU, or several hosts.

    python -m launch.train agile -- all --config=agile/configs/quick.py --workdir=runs/agile
    python -m launch.train coinfer --platform gpu -- init --config=coinfer/configs/quick.py --workdir=runs/c
    python -m launch.train subnets --multihost -- finetune --config ... --workdir ...

Everything after `--` goes to `python -m <technique>.main` (`edgeinfer <technique>`) unchanged.

--platform picks JAX's backend (cpu, gpu, tpu; default: whatever JAX finds).
Every trainer runs data parallel over all visible devices (`common.sharding`:
the batch split on its first axis, parameters replicated); the global batch
size stays what the config says and must divide over the devices.
--multihost starts JAX's distributed runtime first (`jax.distributed.initialize()`),
reading the cluster from the environment (TPU pods, SLURM) or from
--coordinator / --num_processes / --process_id; run the same command on every
host (same --workdir, on a file system they share). Each process reads only its
rows of every batch, the processes write one orbax checkpoint together, and only
process 0 writes reports, plots, metrics.jsonl and exports. See docs/scaling.md.
"""

from __future__ import annotations

import argparse
import os
import runpy
import sys

from common.app import TECHNIQUES
from common.cli import ArgumentParser


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
  if "--" in argv:
    cut = argv.index("--")
    ours, rest = argv[:cut], argv[cut + 1 :]
  else:
    ours, rest = argv, []
  p = ArgumentParser(
    prog="python -m launch.train",
    description=__doc__.split("\n\n")[0],
    formatter_class=argparse.RawDescriptionHelpFormatter,
    epilog=__doc__,
  )
  p.add_argument("technique", choices=TECHNIQUES)
  p.add_argument("--platform", choices=("cpu", "gpu", "tpu"), default=None)
  p.add_argument("--multihost", action="store_true", help="call jax.distributed.initialize() first")
  p.add_argument("--coordinator", default=None, help="host:port of process 0 (multihost)")
  p.add_argument("--num_processes", type=int, default=None)
  p.add_argument("--process_id", type=int, default=None)
  return p.parse_args(ours), rest


def start_multihost(multihost: bool, coordinator: str | None, num_processes, process_id) -> None:
  """Checks the four multi-host flags and starts the distributed runtime; a bad value exits 2."""
  from common import sharding
  from common.errors import ConfigError

  flags = {"--coordinator": coordinator, "--num_processes": num_processes, "--process_id": process_id}
  given = [name for name, v in flags.items() if v is not None]
  try:
    if not multihost:
      if given:
        raise ConfigError(f"{', '.join(given)}: only with --multihost")
      return
    if given and len(given) < 3:
      raise ConfigError("--coordinator, --num_processes and --process_id go together (or none of them)")
    if given and not 0 <= process_id < num_processes:
      raise ConfigError(f"--process_id {process_id}: must be in [0, --num_processes {num_processes})")
    sharding.initialize_multihost(coordinator, num_processes, process_id)
  except ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


def main(argv: list[str] | None = None) -> None:
  args, rest = parse(sys.argv[1:] if argv is None else argv)
  from common.xla_cpu import set_cpu_flags

  set_cpu_flags()  # before JAX starts its backend
  if args.platform:
    os.environ["JAX_PLATFORMS"] = args.platform
  start_multihost(args.multihost, args.coordinator, args.num_processes, args.process_id)
  import jax

  print(
    f"launch.train: {args.technique} on {jax.device_count()} {jax.default_backend()} device(s), process {jax.process_index()}/{jax.process_count()}",
    file=sys.stderr,
  )
  sys.argv = [f"{args.technique}.main", *rest]
  runpy.run_module(f"{args.technique}.main", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
  main()
