"""The main job: every technique's quick stage on the embedded `digits` data.

    python -m launch.quickstart                        # all stages -> runs/quickstart/
    python -m launch.quickstart --only common,agile    # some stages
    python -m launch.quickstart --fast                 # smallest settings (smoke test)
    python -m launch.quickstart --multihost --coordinator HOST:PORT --num_processes N --process_id K

Each stage trains, decides, exports and writes its own report under
runs/quickstart/<stage>/; this writes runs/quickstart/report.md linking them,
with the time of each stage. The goal is under 10 minutes on 2 quiet CPU cores; measured
6 min 56 s wall (`/usr/bin/time -v python -m launch.quickstart --workdir runs/qs_fresh`, a fresh
workdir, December 2026, after the fleet and real-links round, quiet machine: load average 0.1 at
the start; peak resident set 4.1 GB): common 21 s, agile 64 s, offload 40 s (the multi-camera
and robustness studies included), coinfer 103 s, subnets 87 s, branching 59 s, deploy 36 s.
"""

from __future__ import annotations

import importlib
import os
import sys
import time
from pathlib import Path

from absl import flags

from common import app, cli, report

STAGES = ("common", *app.TECHNIQUES, "deploy")

_ONLY = flags.DEFINE_list("only", list(STAGES), f"stages to run, from {STAGES}")
_FAST = flags.DEFINE_bool("fast", False, "shrink every stage to a smoke run")
_MULTIHOST = flags.DEFINE_bool("multihost", False, "start JAX's distributed runtime first (see launch.train)")
_COORDINATOR = flags.DEFINE_string("coordinator", None, "host:port of process 0 (multihost)")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "processes in the run (multihost)")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "this process's index (multihost)")
DEFAULT_CONFIG = os.path.join(os.path.dirname(__file__), "configs", "quickstart.py")  # the common stage's
FLAGS = flags.FLAGS


def _run(config) -> int:
  from common.errors import ConfigError

  unknown = [s for s in _ONLY.value if s not in STAGES]
  if unknown:
    raise ConfigError(f"--only {','.join(unknown)}: unknown stage; choose from {', '.join(STAGES)}")
  root = Path(FLAGS.workdir)
  results, rows = {}, []
  for name in [s for s in STAGES if s in _ONLY.value]:
    mod = importlib.import_module(f"launch.stages.{name}")
    print(f"== stage {name}", flush=True)
    t0 = time.time()
    kwargs = {"config": config} if name == "common" else {}
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


def _main(argv: list[str]) -> int:
  from common.errors import ConfigError

  default = DEFAULT_CONFIG + (
    ":fast" if app.bool_flag(argv, "fast") else ""
  )  # the common stage's fast variant
  rest, config = app.parse_command(argv, default)
  if len(rest) > 1:
    raise ConfigError(f"unexpected arguments: {rest[1:]} (edgeinfer quickstart --help)")
  from launch.stages.common import validate

  validate(config)  # the common stage's config, before any stage runs
  from common.xla_cpu import set_cpu_flags

  set_cpu_flags()  # before JAX starts its backend

  from launch.train import start_multihost

  start_multihost(_MULTIHOST.value, _COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  return _run(config)


def main(argv: list[str] | None = None) -> None:
  argv = list(sys.argv if argv is None else argv)
  app.define_flags()
  FLAGS.set_default("workdir", "runs/quickstart")
  if any(a in ("-h", "--help", "--helpfull") for a in argv[1:]):
    print(
      __doc__.strip()
      + "\n\nflags:\n"
      + FLAGS.module_help(sys.modules[__name__])
      + "\n"
      + FLAGS.module_help(app)
    )
    return
  cli.run_main(lambda: _main(argv))


if __name__ == "__main__":
  main()
