"""Quickstart stage `branching`: NN-Stretch on digits, end to end.

Trains the single-branch R-tiny-C and the stretched R-tiny-CD (CPU + DSP
branches) with the same pycls recipe, searches a CPU+DSP stretching of the
published R-50 with the calibrated cost model, exports the stretched model as
tagged TFLite plus per-branch subgraphs, fits the `host` processor to LiteRT
timings on this CPU and measures branch-parallel execution on 2 threads
against the single-branch model. Writes `report.md` and `summary.json`.
"""

from __future__ import annotations

from pathlib import Path

from common import app, cli


def run(workdir: Path, *, fast: bool = False) -> dict:
  """`edgeinfer branching run --config=branching/configs/quick.py:quickstart` (`:fast` with --fast).

  The leave-one-model-out calibration (6 refits) is left to `edgeinfer branching calibrate` and the
  benchmark; the stage reports the in-sample fit.
  """
  from branching import pipeline

  config = app.load_config_file(f"branching/configs/quick.py:{'fast' if fast else 'quickstart'}")
  pipeline.validate(config)  # before anything is written: a rejected config leaves the workdir as it was
  pipeline.preflight(config, Path(workdir))
  cli.save_config(config, Path(workdir))
  return pipeline.step_run(pipeline.Run(config, Path(workdir)))
