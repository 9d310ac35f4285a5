"""After training: payload, latency model, exports with their parity, and the report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from agile import payload as pl
from agile.models import AgileNN
from common import data as data_lib
from common import micro
from common.models import count_params
from common.report import Report, write_json


def device_symbols(
  model: AgileNN, variables: dict, test_ds, prep, batch_size: int
) -> tuple[np.ndarray, np.ndarray]:
  """(combined logits, remote symbols) of the JAX model on the whole test set."""

  @jax.jit
  def run(x):
    logits, aux = model.apply(variables, prep(x), train=False)
    return logits, aux["symbols"]

  logits, symbols = [], []
  for batch in data_lib.batches(test_ds, batch_size, drop_last=False):
    lo, sy = run(batch["image"])
    m = int(batch["mask"].sum())
    logits.append(np.asarray(lo)[:m])
    symbols.append(np.asarray(sy)[:m])
  return np.concatenate(logits), np.concatenate(symbols)


def cost_summary(model: AgileNN, variables: dict, input_size: int) -> dict[str, float]:
  """MACs and parameters of the device part and of the remote part, per image."""
  x = jnp.zeros((1, input_size, input_size, 3), jnp.float32)
  _, idx = model.apply(variables, x, method=AgileNN.device)
  q = model.apply(variables, idx, method=AgileNN.dequantize)
  device_macs = pl.count_macs(lambda a: model.apply(variables, a, method=AgileNN.device), x)
  remote_macs = pl.count_macs(lambda a: model.apply(variables, a, method=AgileNN.remote), q)
  p = variables["params"]
  device_params = count_params([p["fe"], p["local"], p["quantizer"], p["combiner"]])
  remote_params = count_params(p["remote_predictor"])
  return {
    "device_macs": device_macs,
    "remote_macs": remote_macs,
    "device_params": device_params,
    "remote_params": remote_params,
    "remote_feature_shape": list(q.shape[1:]),
  }


def _export(config, workdir: Path, model, variables, test_ds, prep, jax_logits) -> dict[str, Any]:
  from agile import export as agile_export

  n_cal = min(config.export.calibration_images, len(test_ds))
  n_par = len(test_ds) if not config.export.parity_images else min(config.export.parity_images, len(test_ds))
  x_all = np.asarray(prep(test_ds.images[:n_par]))
  rng = np.random.default_rng(config.seed)
  cal_idx = rng.choice(len(test_ds), n_cal, replace=False)
  calibration = np.asarray(prep(test_ds.images[cal_idx]))
  out = agile_export.export_all(
    model,
    variables,
    x_all[:1],
    calibration,
    workdir / "exports",
    parity_x=x_all,
    ram_bytes=micro.target_ram_bytes(config, "export.target_ram_bytes"),
  )
  labels = test_ds.labels[:n_par]
  ref_top1 = jax_logits[:n_par].argmax(-1)
  res = {k: v for k, v in out.items() if v is None or isinstance(v, int | float | list)}
  for kind in ("float", "int8"):
    split = agile_export.split_inference(out[f"device_{kind}"], out["remote_onnx"], out["meta"], x_all)
    res[f"{kind}_split_top1_agreement_with_jax"] = float(np.mean(split["combined"].argmax(-1) == ref_top1))
    res[f"{kind}_split_accuracy"] = float(np.mean(split["combined"].argmax(-1) == labels))
  res["parity_images"] = n_par
  return res


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


def finish(
  config: ml_collections.ConfigDict,
  workdir: Path,
  *,
  model: AgileNN,
  variables: dict,
  test_ds,
  prep,
  final: dict,
  train_metrics: list[dict],
) -> dict[str, Any]:
  """Payload, latency, exports, report.md and final_metrics.json; returns the metrics."""
  logits, symbols = device_symbols(model, variables, test_ds, prep, config.train.eval_batch_size)
  payload = pl.payload_report(symbols, config.model.num_centroids)
  costs = cost_summary(model, variables, config.input_size)
  lm = pl.LatencyModel(**config.latency.to_dict())
  raw_bits = float(np.prod(test_ds.image_shape) * 8)
  table = pl.latency_table(
    lm, device_macs=costs["device_macs"], device_params=costs["device_params"], remote_macs=costs["remote_macs"],
    remote_params=costs["remote_params"], payload_bits=payload["best_codec_bits_per_image"], raw_image_bits=raw_bits,
  )  # fmt: skip
  metrics: dict[str, Any] = {**final, "payload": payload, "costs": costs, "latency": table}
  if config.export.enabled:
    metrics["export"] = _export(config, workdir, model, variables, test_ds, prep, logits)
  write_json(workdir / "final_metrics.json", metrics)
  write_report(config, workdir, metrics, train_metrics)
  return metrics


def write_report(config, workdir: Path, m: dict, train_metrics: list[dict]) -> Path:
  rep = Report(f"AgileNN on {config.dataset}", workdir)
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
  if "export" in m:
    e = m["export"]
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
  rep.heading("Training curves")
  _plots(rep, train_metrics)
  return rep.write()
