"""The main job: every technique's quick stage on the embedded `digits` data.

    python -m launch.quickstart                        # all stages -> runs/quickstart/
    python -m launch.quickstart --only common,agile    # some stages
    python -m launch.quickstart --fast                 # smallest settings (smoke test)
    python -m launch.quickstart --multihost --coordinator HOST:PORT --num_processes N --process_id K

Each stage trains, decides, exports and writes its own report under
runs/quickstart/<stage>/; this writes runs/quickstart/report.md linking them,
with the time of each stage. The goal is under 10 minutes on 2 quiet CPU cores; the total with
the `deploy` stage and the December 2026 changes has not been measured on a quiet machine yet.
"""

from __future__ import annotations

import importlib
import os
import sys
import time
from pathlib import Path

from absl import app, flags
from ml_collections import config_flags

from common import cli, report

STAGES = ("common", "agile", "offload", "coinfer", "subnets", "branching", "deploy")

_WORKDIR = flags.DEFINE_string("workdir", "runs/quickstart", "where every stage writes its run")
_ONLY = flags.DEFINE_list("only", list(STAGES), f"stages to run, from {STAGES}")
_FAST = flags.DEFINE_bool("fast", False, "shrink every stage to a smoke run")
_MULTIHOST = flags.DEFINE_bool("multihost", False, "start JAX's distributed runtime first (see launch.train)")
_COORDINATOR = flags.DEFINE_string("coordinator", None, "host:port of process 0 (multihost)")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "processes in the run (multihost)")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "this process's index (multihost)")
_CONFIG = config_flags.DEFINE_config_file(
  "config", os.path.join(os.path.dirname(__file__), "configs", "quickstart.py"), "config of the common stage"
)


def _run() -> int:
  from common.errors import ConfigError

  unknown = [s for s in _ONLY.value if s not in STAGES]
  if unknown:
    raise ConfigError(f"--only {','.join(unknown)}: unknown stage; choose from {', '.join(STAGES)}")
  root = Path(_WORKDIR.value)
  results, rows = {}, []
  for name in [s for s in STAGES if s in _ONLY.value]:
    mod = importlib.import_module(f"launch.stages.{name}")
    print(f"== stage {name}", flush=True)
    t0 = time.time()
    kwargs = {"config": _CONFIG.value} if name == "common" else {}
    results[name] = mod.run(root / name, fast=_FAST.value, **kwargs)
    dt = time.time() - t0
    rows.append(
      [
        f"[{name}]({name}/report.md)",
        f"{dt:.1f}",
        ", ".join(f"{k}={report._fmt(v)}" for k, v in results[name].items() if isinstance(v, int | float)),
      ]
    )
    print(f"== stage {name} done in {dt:.1f} s: {results[name]}", flush=True)
  rep = report.Report("edgeinfer quickstart", root)
  rep.text("Every stage ran on the embedded `digits` data set. Each link opens the stage's own report.")
  rep.table(["stage", "seconds", "headline numbers"], rows)
  rep.write()
  report.write_json(root / "summary.json", results)
  print(f"wrote {root / 'report.md'}")
  return 0


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from launch.xla_cpu import set_cpu_flags

  set_cpu_flags()  # before JAX starts its backend

  from launch.train import start_multihost

  start_multihost(_MULTIHOST.value, _COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  cli.run_main(_run)


if __name__ == "__main__":
  sys.exit(app.run(main))
