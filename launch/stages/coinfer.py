"""Quickstart stage of coinfer: the quick config end to end (init, cluster, distill, individual
subset, CLIO/SPINN, controller simulation, export with parity) into `workdir`, then report.md."""

from __future__ import annotations

import pathlib

from coinfer.configs import quick
from coinfer.main import run_step, validate

STEPS = ("init", "cluster", "distill", "individual", "baselines", "simulate", "export", "report")


def fast_config():
  """A much smaller run (8x8 images, 9 setups, a few steps) for the stage's own test."""
  c = quick.get_config()
  c.data.image_size = 8
  c.data.limit = 128
  c.setups.channels = [1, 2, 4]
  c.setups.bits = [1, 2, 8]
  c.setups.train_bits = [1, 2, 8]
  c.model.settings = [[2, 16, 1, 2]]
  c.model.last_channels = 32
  c.train.batch_size = 32
  for s in ("init", "distill", "individual", "baselines"):
    c[s].epochs = 1
    c[s].max_steps = 3
  c.cluster.steps = 1
  c.cluster.num_clusters = 2
  c.distill.calibrate_batches = 1
  c.individual.subset = [[1, 1], [4, 8]]
  c.baselines.clio_widths = [1, 4]
  c.stream.frames = 60
  c.stream.trace_seconds = 10.0
  c.export.setups = [[1, 1], [2, 2], [4, 8]]
  c.export.int8 = True  # the deploy tests run the int8 device parts
  c.export.parity_images = 40
  return c


def run(workdir: pathlib.Path, *, fast: bool = False) -> dict:
  config = fast_config() if fast else quick.get_config()
  validate(config)
  workdir = pathlib.Path(workdir)
  from common.cli import save_config

  save_config(config, workdir)  # what the deploy stage reads back
  out = {}
  for step in STEPS:
    out[step] = run_step(step, config, workdir)
  from coinfer.stages import accuracy_loss

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
