"""REDS command line: python -m subnets.main importance|knapsack|finetune|export --config ... --workdir ...

Each command runs the commands before it when their outputs are missing from the
workdir (so `export` alone runs everything) and rewrites workdir/report.md.
"""

from __future__ import annotations

import json
import sys

from absl import app, flags
from ml_collections import config_flags

from common import cli

COMMANDS = ("importance", "knapsack", "finetune", "export")

_CONFIG = config_flags.DEFINE_config_file("config", "subnets/configs/default.py", "REDS config file")
_WORKDIR = flags.DEFINE_string("workdir", "runs/subnets", "the run's directory")


def main(argv: list[str]) -> None:
  if len(argv) != 2 or argv[1] not in COMMANDS:
    raise app.UsageError(f"usage: python -m subnets.main {{{'|'.join(COMMANDS)}}} --config ... --workdir ...")

  def _run() -> int:
    from subnets import pipeline

    out = pipeline.run_step(argv[1], _CONFIG.value, _WORKDIR.value)
    small = {k: v for k, v in out.items() if isinstance(v, int | float | str)}
    print(json.dumps(small, default=str))
    print(f"wrote {_WORKDIR.value}/report.md")
    return 0

  cli.run_main(_run)


if __name__ == "__main__":
  sys.exit(app.run(main))
