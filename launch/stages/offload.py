"""Quickstart stage `offload`: digits classifier pair -> metrics -> DQN + MDP -> simulation -> exports.

Runs `offload/configs/quick.py` (`:fast` for --fast) end to end into `workdir`, as
`edgeinfer offload all` does: trains a tiny and a larger CNN on digits, computes the offloading
metrics (k-fold protocol), trains the DQN for (r, b) = (0.1, 4) and (0.25, 5) in one vmapped
program, simulates weak / strong / lower bound / baseline / MDP / DQN on location-reset test
streams, exports the DQN (TFLite, ONNX, int8 C array) and the MDP thresholds, then runs the small
multi-camera grid (N = 2, 4, 8 cameras behind one switch: isolated / hierarchical / smart) and the
robustness study (policies fitted on shifted metrics), and writes report.md.
"""

from __future__ import annotations

import time
from pathlib import Path

from common import app, report


def run(workdir: Path, *, fast: bool = False) -> dict:
  from offload import pipeline

  config = app.load_config_file("offload/configs/quick.py:fast" if fast else "offload/configs/quick.py")
  workdir = Path(workdir)
  title = "Quickstart: offloading under a token bucket (digits)"
  t0 = time.time()
  tr = pipeline.run_steps(("metrics", "train"), config, workdir, show_progress=not fast)["train"]
  t1 = time.time()
  sim = pipeline.run_steps(("simulate",), config, workdir, show_progress=not fast, title=title)["simulate"]
  t2 = time.time()
  more = pipeline.run_steps(pipeline.STUDIES, config, workdir, show_progress=not fast, title=title)
  out = {
    "train_seconds": t1 - t0,
    "simulate_seconds": t2 - t1,
    "multicam_robust_seconds": time.time() - t2,
    "seconds_per_q_iteration": tr.get("seconds_per_iteration", float("nan")),
  }
  for i, s in enumerate(sim["settings"]):
    tag = f"r{s['tr']}_b{s['tb']}"
    for p in ("baseline", "mdp", "dqn"):
      out[f"{p}_loss_{tag}"] = sim["losses"][p][i]
  out["weak_loss"] = sim["losses"]["weak"][0]
  out["strong_loss"] = sim["losses"]["strong"][0]
  mc = more["multicam"]
  for s in ("isolated", "hierarchical", "smart"):
    out[f"multicam_{s}_loss"] = [round(x, 5) for x in mc["loss"][s][0][0]]
  out["multicam_cameras"] = mc["cameras"]
  if "export" in sim:
    out["dqn_tflite_decision_agreement"] = sim["export"]["tflite_decision_agreement"]
  report.write_json(workdir / "summary.json", out)
  return out
