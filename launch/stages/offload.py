"""Quickstart stage `offload`: digits classifier pair -> metrics -> DQN + MDP -> simulation -> exports.

Runs `offload/configs/quick.py` end to end into `workdir`: trains a tiny and a
larger CNN on digits, computes the offloading metrics (k-fold protocol), trains
the DQN for (r, b) = (0.1, 4) and (0.25, 5) in one vmapped program, simulates
weak / strong / lower bound / baseline / MDP / DQN on location-reset test
streams, exports the DQN (TFLite, ONNX, int8 C array) and the MDP thresholds,
and writes report.md.
"""

from __future__ import annotations

import time
from pathlib import Path

from common import cli, report


def run(workdir: Path, *, fast: bool = False) -> dict:
  from offload import evaluate
  from offload import train as otrain
  from offload.configs import quick

  c = quick.get_config()
  if fast:
    c.classifiers.num_epochs = 2
    c.maxiter = 10
    c.sfreq = 5
    c.ckpt_every = 5
    c.tnum, c.tlen, c.snum, c.slen = 4, 2_000, 4, 2_000
    c.export_int8 = False
  workdir = Path(workdir)
  otrain.validate(c)  # before anything is written
  cli.save_config(c, workdir)
  t0 = time.time()
  tr = otrain.train_and_evaluate(c, workdir, show_progress=not fast)
  t1 = time.time()
  sim = evaluate.simulate_and_report(
    c, workdir, show_progress=not fast, title="Quickstart: offloading under a token bucket (digits)"
  )
  out = {
    "train_seconds": t1 - t0,
    "simulate_seconds": time.time() - t1,
    "seconds_per_q_iteration": tr["seconds_per_iteration"],
  }
  for i, s in enumerate(sim["settings"]):
    tag = f"r{s['tr']}_b{s['tb']}"
    for p in ("baseline", "mdp", "dqn"):
      out[f"{p}_loss_{tag}"] = sim["losses"][p][i]
  out["weak_loss"] = sim["losses"]["weak"][0]
  out["strong_loss"] = sim["losses"]["strong"][0]
  if "export" in sim:
    out["dqn_tflite_decision_agreement"] = sim["export"]["tflite_decision_agreement"]
  report.write_json(workdir / "summary.json", out)
  return out
