"""Quickstart stage of coinfer: the quick config end to end (init, cluster, distill, individual
subset, CLIO/SPINN, controller simulation, export with parity) into `workdir`, then report.md.
With fast=True the `quick.py:fast` variant (8x8 images, 9 setups, a few steps)."""

from __future__ import annotations

import pathlib

from coinfer import pipeline
from coinfer.report import accuracy_loss
from common import app


def run(workdir: pathlib.Path, *, fast: bool = False) -> dict:
  config = app.load_config_file("coinfer/configs/quick.py" + (":fast" if fast else ""))
  workdir = pathlib.Path(workdir)
  out = pipeline.run_steps(config, workdir)  # config.json is what the deploy stage reads back
  loss = accuracy_loss(out["distill"]["I-D-C"], out["individual"])
  sim = out["simulate"]["traces"]

  def mean_of(ctl, key):
    return sum(t["controllers"][ctl][key] for t in sim.values()) / len(sim)

  return {
    "init_accuracy": out["init"]["accuracy"],
    "accuracy_loss_mean": loss["mean"],
    "accuracy_loss_max": loss["max"],
    "mpc_miss_rate": mean_of("mpc", "deadline_miss_rate"),
    "rate_miss_rate": mean_of("rate", "deadline_miss_rate"),
    "mpc_timely_accuracy": mean_of("mpc", "timely_accuracy"),
    "export_min_top1_agreement": min(r["top1_agreement"] for r in out["export"]["setups"]),
    "report": str(workdir / "report.md"),
  }
