"""Command line: `python -m offload.main train|simulate|metrics --config offload/configs/quick.py --workdir DIR`.

Knobs are config keys, e.g. --config.tr='(0.1,)' --config.tb='(4.0,)' --config.stype=1 --config.itype=1
--config.lr=4 --config.maxiter=4000 --config.source=npz --config.metrics_file=data/ofa_top5.npz.
train    trains the DQN (resumes from the workdir's checkpoints)
simulate runs every policy on the test streams and writes report.md, result.npz, loss_vs_rate.png
metrics  trains the digits classifier pair and writes the metrics files only
"""

from __future__ import annotations

import sys
from pathlib import Path

from absl import app, flags
from ml_collections import config_flags

from common import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "offload config file", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "run directory (checkpoints, report)")
COMMANDS = ("train", "simulate", "metrics")


def _run(command: str) -> int:
  from common.errors import ConfigError
  from offload import evaluate, train

  if command not in COMMANDS:
    raise ConfigError(f"unknown command {command!r}; use one of {', '.join(COMMANDS)}")
  if _CONFIG.value is None or not _WORKDIR.value:
    raise ConfigError(
      "--config and --workdir are required, e.g. --config offload/configs/quick.py --workdir runs/x"
    )
  c, workdir = _CONFIG.value, Path(_WORKDIR.value)
  if command == "train":
    out = train.train_and_evaluate(c, workdir)
    print(
      f"trained {out['iterations']} iterations ({out['seconds_per_iteration']:.3f} s each); loss {out['loss']}"
    )
  elif command == "simulate":
    out = evaluate.simulate_and_report(c, workdir)
    for p, v in out["losses"].items():
      print(f"{p:12s} " + " ".join(f"{x:.4f}" for x in v))
    print(f"wrote {workdir / 'report.md'}")
  else:
    train.validate(c)
    d = train.load_metrics(c, workdir)
    print(
      f"metrics in {workdir / 'metrics'}: {len(d.train.metrics)} training, {len(d.test.metrics)} test images"
    )
  return 0


def main(argv: list[str]) -> None:
  if len(argv) != 2:
    raise app.UsageError(
      f"usage: python -m offload.main {{{'|'.join(COMMANDS)}}} --config FILE --workdir DIR"
    )
  cli.run_main(lambda: _run(argv[1]))


if __name__ == "__main__":
  sys.exit(app.run(main))
