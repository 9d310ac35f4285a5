"""Quickstart stage of agile: reference network, AgileNN with the XAI losses, payload,
latency model and export with split-inference parity, into `workdir` (report.md there)."""

from __future__ import annotations

import pathlib

from common import app


def stage_config(fast: bool = False):
  """The quick config's variant for the quickstart (`quickstart`, or `fast`: a smoke run)."""
  return app.load_config_file("agile/configs/quick.py:" + ("fast" if fast else "quickstart"))


def run(workdir: pathlib.Path, *, fast: bool = False) -> dict:
  from agile import pipeline

  m = pipeline.run_all(stage_config(fast), pathlib.Path(workdir))
  out = {
    "accuracy": m["accuracy"],
    "local_accuracy": m["local_accuracy"],
    "remote_accuracy": m["remote_accuracy"],
    "reference_accuracy": m["reference_accuracy"],
    "skewness": m["skewness"],
    "symbol_entropy_bits": m["symbol_entropy_bits"],
    "codebook_collapsed": m["codebook_collapsed"],
    "initial_skewness": m["initial_skewness"],
    "payload_bits_best_codec": m["payload"]["best_codec_bits_per_image"],
    "payload_bits_raw": m["payload"]["raw_bits_per_image"],
    "agile_latency_ms": 1e3 * m["latency"][0]["total_s"],
  }
  if "export" in m:
    out["float_split_top1_agreement"] = m["export"]["float_split_top1_agreement_with_jax"]
    out["device_flash_bytes"] = m["export"]["device_flash_bytes"]
  return out
