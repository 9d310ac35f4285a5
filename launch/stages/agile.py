"""Quickstart stage of agile: reference network, AgileNN with the XAI losses, payload,
latency model and export with split-inference parity, into `workdir` (report.md there)."""

from __future__ import annotations

import pathlib

from agile.configs import quick


def stage_config(fast: bool = False):
  """The quick config, shortened to fit the quickstart's time budget (fast: a smoke run)."""
  c = quick.get_config()
  c.reference.epochs = 8
  c.train.epochs = 10
  c.train.eval_every_epochs = 5
  c.export.parity_images = 0
  if fast:
    c.limit = 256
    c.reference.epochs = 1
    c.train.epochs = 1
    c.train.eval_every_epochs = 0
    c.export.calibration_images = 16
    c.export.parity_images = 64
  return c


def run(workdir: pathlib.Path, *, fast: bool = False) -> dict:
  from agile import train

  m = train.train_and_evaluate(stage_config(fast), pathlib.Path(workdir))
  out = {
    "accuracy": m["accuracy"],
    "local_accuracy": m["local_accuracy"],
    "remote_accuracy": m["remote_accuracy"],
    "reference_accuracy": m["reference_accuracy"],
    "skewness": m["skewness"],
    "initial_skewness": m["initial_skewness"],
    "payload_bits_best_codec": m["payload"]["best_codec_bits_per_image"],
    "payload_bits_raw": m["payload"]["raw_bits_per_image"],
    "agile_latency_ms": 1e3 * m["latency"][0]["total_s"],
  }
  if "export" in m:
    out["float_split_top1_agreement"] = m["export"]["float_split_top1_agreement_with_jax"]
    out["device_flash_bytes"] = m["export"]["device_flash_bytes"]
  return out
