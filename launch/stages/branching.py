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

from branching import pipeline
from branching.configs import quick


def run(workdir: Path, *, fast: bool = False) -> dict:
  config = quick.get_config()
  config.unlock()
  if fast:
    config.train.num_epochs = 1
    config.data.limit = 256
    config.run.repeats = 10
  else:
    config.train.num_epochs = 4
    config.run.calibration_models = 3
  config.lock()
  # The leave-one-model-out calibration (6 refits) is left to `python -m branching.main calibrate`
  # and the benchmark; the stage reports the in-sample fit.
  return pipeline.run(config, Path(workdir), fast=fast, lomo=False)
