"""Quickstart stage `deploy`: the coinfer stage's exports on the serving runtime.

`edgeinfer coinfer deploy` on the coinfer stage's run (runs/quickstart/coinfer), its report in
this stage's folder: a server process on the run's model repository, a device process streaming
test frames through the user-space pacer along a Markov bandwidth trace (scaled to the small
images' payloads by the quick config's `deploy` section) with the MPC controller in the loop,
and report.md with the measured figures beside the simulator's.
"""

from __future__ import annotations

from pathlib import Path

from common.errors import CheckpointError


def run(workdir: Path, *, fast: bool = False) -> dict:
  from coinfer import pipeline
  from common import app

  workdir = Path(workdir)
  coinfer_run = workdir.parent / "coinfer"
  if not (coinfer_run / "exports" / "repository").is_dir():
    raise CheckpointError(
      f"{coinfer_run}/exports/repository is missing; run the coinfer stage first (--only coinfer,deploy)"
    )
  config = app.load_config_file("coinfer/configs/quick.py" + (":fast" if fast else ""), lock=False)
  config.deploy.out = str(workdir)
  config.lock()
  return pipeline.run_steps(config, coinfer_run, ("deploy",))["deploy"]
