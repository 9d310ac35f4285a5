"""report.md of an agile run: accuracy and skewness, payload, latency model, exports, training curves.

Reads the steps' results in the workdir (agile.pipeline writes them); computes nothing.
"""

from __future__ import annotations

import math
from pathlib import Path

from agile import codebook
from common import micro, safeio
from common import train as train_lib
from common.report import Report


def write_report(config, workdir: Path) -> Path:
  """Rewrites workdir/report.md from the steps' results there (final_metrics.json, or train.json
  before `evaluate` has run) and the training curves of metrics.jsonl."""
  workdir = Path(workdir)
  m = safeio.load_json_if_present(workdir / "final_metrics.json", what="final metrics")
  m = m or safeio.load_json_if_present(workdir / "train.json", what="training result") or {}
  rep = Report(f"AgileNN on {config.dataset}", workdir)
  if not m:
    rep.text("No step has finished yet: run `edgeinfer agile all --config=... --workdir=...`.")
    return rep.write()
  rep.text(
    f"K = {m['k']} local channels of {config.model.feature_channels}, {config.model.num_centroids} centroids, "
    f"RHO = {config.train.rho}, LAMBDA = {config.train.lam}, {config.train.epochs} epochs, "
    f"step {m.get('step')}. Test-set numbers, final weights (no best-on-test selection)."
  )
  rep.heading("Accuracy and skewness")
  rep.table(
    ["combined", "local only", "remote only", "reference NN", "evaluator on FE features", "test skewness"],
    [[m["accuracy"], m["local_accuracy"], m["remote_accuracy"], m["reference_accuracy"],
      m["evaluator_on_features_accuracy"], m["skewness"]]],
  )  # fmt: skip
  if "symbol_entropy_bits" in m:
    _codebook(rep, config, m)
  if "payload" in m:
    _evaluation(rep, config, m)
  if "export" in m:
    _exports(rep, m["export"])
  rep.heading("Training curves")
  _plots(rep, train_lib.MetricsWriter(workdir).read())
  return rep.write()


def _codebook(rep: Report, config, m: dict) -> None:
  bound = math.log2(config.model.num_centroids)
  rep.text(
    f"Remote codebook on the test set: {m['symbol_entropy_bits']:.3f} bits per symbol of log2(C) = {bound:.0f} "
    f"({100 * m['symbol_entropy_share']:.1f}%), {m['symbols_used']} of {config.model.num_centroids} symbols used."
  )
  if m["codebook_collapsed"]:
    rep.text(
      f"**Codebook collapsed**: the symbols' entropy is below {100 * codebook.COLLAPSE_RATIO:.1f}% of its bound, "
      "so the remote predictor sees almost the same symbol everywhere and the offloaded part carries next to "
      "no information (see `symbol_entropy_bits` per step in metrics.jsonl)."
    )


def _evaluation(rep: Report, config, m: dict) -> None:
  p = m["payload"]
  rep.heading("Offloaded payload (bits per test image)")
  rep.table(
    ["raw", "entropy bound", "zlib", "bz2", "lzma", "best"],
    [[p["raw_bits_per_image"], p["entropy_bound_bits_per_image"], p["zlib_bits_per_image"], p["bz2_bits_per_image"],
      p["lzma_bits_per_image"], f"{p['best_codec']}: {p['best_codec_bits_per_image']:.0f}"]],
  )  # fmt: skip
  rep.text(f"Symbol histogram over the test set: {p['symbol_histogram']}.")
  lat = config.latency
  rep.heading("Latency model (per image)")
  rep.text(
    f"Device {lat.device_clock_hz / 1e6:.0f} MHz x {lat.device_macs_per_cycle} MAC/cycle, link "
    f"{lat.link_bps / 1e6:.3g} Mbit/s, server {lat.server_macs_per_s:.3g} MAC/s, RTT {lat.rtt_s * 1e3:.3g} ms. "
    "Raw image offload sends the uint8 input image."
  )
  rep.table(
    ["scheme", "device MACs", "device params", "payload bits", "device ms", "link ms", "server ms", "total ms"],
    [[r["scheme"], r["device_macs"], r["device_params"], r["payload_bits"], 1e3 * r["device_s"], 1e3 * r["link_s"],
      1e3 * r["server_s"], 1e3 * r["total_s"]] for r in m["latency"]],
  )  # fmt: skip


def _exports(rep: Report, e: dict) -> None:
  rep.heading("Exports (exports/)")
  rep.table(
    ["device int8 flash B", "largest activation B", "device float B", "remote ONNX B",
     "float split top-1 = JAX", "int8 split top-1 = JAX", "int8 split accuracy"],
    [[e["device_flash_bytes"], e["device_int8_largest_activation_bytes"], e["device_float_tflite_bytes"],
      e["remote_onnx_bytes"], e["float_split_top1_agreement_with_jax"], e["int8_split_top1_agreement_with_jax"],
      e["int8_split_accuracy"]]],
  )  # fmt: skip
  if "device_micro_arena_bytes" in e:
    rep.text(
      "The int8 device part under TensorFlow Lite Micro's own interpreter (reference kernels), "
      "against LiteRT on the same parity images; the arena is the smallest that allocates "
      f"(bisection in {micro.ARENA_STEP}-byte steps). Ops: {', '.join(e['device_micro_ops'])}."
    )
    rep.table(micro.MICRO_COLUMNS, [micro.micro_cells(e, "device_micro_")])


def _plots(rep: Report, train_metrics: list[dict]) -> None:
  tr = [m for m in train_metrics if m.get("split") == "train" and "skewness" in m]
  evs = [m for m in train_metrics if m.get("split") == "eval" and "skewness" in m]
  series = {}
  if tr:
    series["train skewness"] = ([m["step"] for m in tr], [m["skewness"] for m in tr])
    series["train accuracy"] = ([m["step"] for m in tr], [m["accuracy"] for m in tr])
  if evs:
    series["test skewness"] = ([m["step"] for m in evs], [m["skewness"] for m in evs])
    series["test accuracy (combined)"] = ([m["step"] for m in evs], [m["accuracy"] for m in evs])
  if series:
    rep.line_plot("skewness_accuracy.png", series, xlabel="step", ylabel="skewness / accuracy",
                  title="Skewness and accuracy over training")  # fmt: skip
