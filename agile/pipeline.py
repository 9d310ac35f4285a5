"""The AgileNN pipeline as resumable steps over one workdir.

  train    : the reference network (workdir/reference/variables), then AgileNN with the XAI losses
             (orbax checkpoints in workdir/checkpoints) -> train.json, agile_variables/
  evaluate : payload of the remote symbols over the test set, MACs and parameters of both halves,
             the latency model -> evaluate.json
  export   : device TFLite float/int8 + TFLite Micro arrays, remote ONNX, split-inference parity
             against JAX -> exports/, export.json (nothing when config.export.enabled is False)

Each step runs the steps before it when their outputs are missing from the workdir, and every step
rewrites final_metrics.json (what the steps measured, merged) and report.md from what exists.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np

from agile import data as agile_data
from agile import payload as pl
from agile import report
from agile import train as train_lib
from agile.models import AgileNN, init_variables
from common import app, micro, provenance, safeio
from common import checkpoint as ckpt_lib
from common import config as cfg
from common import data as data_lib
from common.models import count_params
from common.report import write_json
from common.serving import runner

# The config sections each output is made from; a reused output must have been made from the same.
_DATA = ("seed", "dataset", "data_dir", "limit", "input_size")
_TRAINED = (*_DATA, "reference", "model", "train", "-reference.checkpoint_every", "-train.checkpoint_every")
DEPS = {
  "reference": (*_DATA, "reference", "-reference.checkpoint_every"),
  "checkpoints": _TRAINED,
  "agile_variables": _TRAINED,
  "train.json": _TRAINED,
  "evaluate.json": (*_TRAINED, "latency"),
  "export.json": (*_TRAINED, "latency", "export"),
}


def preflight(config: ml_collections.ConfigDict, workdir: Path) -> None:
  """Refuses a workdir whose outputs were made from other config values (before anything is written)."""
  provenance.check(workdir, config, DEPS)


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks every user-settable value once; raises ConfigError naming key, value and range."""
  cfg.check_types(config, app.load_config_file("agile/configs/quick.py"))
  cfg.check_seed(config)
  cfg.check_numbers(config)
  runner.validate(config)
  for key in ("model.remote_last_channels", "model.remote_stem_channels", "reference.top_channels"):
    cfg.check_range(config, key, 1, integer=True)
  cfg.check_range(config, "reference.bn_momentum", 0.0, 1.0, hi_open=True)
  cfg.check_range(config, "export.target_ram_bytes", 1024, integer=True)
  cfg.check_choice(config, "dataset", agile_data.DATASETS)
  cfg.check_range(config, "input_size", 8, 1024, integer=True)
  cfg.check_range(config, "limit", 0, None, integer=True)
  cfg.check_range(config, "model.feature_channels", 2, 1024, integer=True)
  cfg.check_range(config, "model.fe_stride", 1, 8, integer=True)
  cfg.check_range(config, "model.split_ratio", 0.0, 1.0, lo_open=True, hi_open=True)
  k = int(np.round(config.model.split_ratio * config.model.feature_channels))
  if not 0 < k < config.model.feature_channels:
    raise cfg.ConfigError(
      f"config.model.split_ratio = {config.model.split_ratio}: gives K = {k} local channels of "
      f"{config.model.feature_channels}; K must be in [1, {config.model.feature_channels - 1}]"
    )
  cfg.check_range(config, "model.num_centroids", 2, 256, integer=True)
  cfg.check_range(config, "model.temperature", 0.0, None, lo_open=True)
  cfg.check_choice(config, "model.quantizer_backward", ("soft", "identity"))
  cfg.check_range(config, "model.bn_momentum", 0.0, 1.0, hi_open=True)
  cfg.check_choice(config, "reference.blocks", ("small", "effnetv2_s", "tiny"))
  cfg.check_range(config, "reference.epochs", 1, None, integer=True)
  cfg.check_range(config, "reference.checkpoint_every", 0, None, integer=True)
  cfg.check_range(config, "train.checkpoint_every", 0, None, integer=True)
  cfg.check_range(config, "reference.batch_size", 1, None, integer=True)
  cfg.check_range(config, "reference.learning_rate", 0.0, None, lo_open=True)
  cfg.check_range(config, "reference.dropout", 0.0, 1.0, hi_open=True)
  cfg.check_range(config, "train.epochs", 1, None, integer=True)
  cfg.check_range(config, "train.batch_size", 1, None, integer=True)
  cfg.check_range(config, "train.eval_batch_size", 1, None, integer=True)
  cfg.check_range(config, "train.learning_rate", 0.0, None, lo_open=True)
  cfg.check_range(config, "train.momentum", 0.0, 1.0, hi_open=True)
  cfg.check_range(config, "train.weight_decay", 0.0, None)
  cfg.check_range(config, "train.rho", 0.0, 1.0)
  cfg.check_range(config, "train.lam", 0.0, 1.0)
  cfg.check_range(config, "train.ig_steps", 2, 256, integer=True)
  cfg.check_choice(config, "train.ig_baseline_table", (True, False))
  cfg.check_range(config, "train.eval_every_epochs", 0, None, integer=True)
  cfg.check_range(config, "train.max_steps", 0, None, integer=True)
  cfg.check_choice(config, "train.channel_remapping", ("none", "global_importance", "topk_appearance"))
  cfg.check_choice(config, "train.centroid_init", ("kmeans", "normal"))
  for key in ("device_clock_hz", "device_macs_per_cycle", "link_bps", "server_macs_per_s"):
    cfg.check_range(config, f"latency.{key}", 0.0, None, lo_open=True)
  cfg.check_range(config, "latency.rtt_s", 0.0, None)
  cfg.check_range(config, "export.calibration_images", 1, None, integer=True)
  cfg.check_range(config, "export.parity_images", 0, None, integer=True)


class Run:
  """What the steps share, built once per command: config, workdir, data, preprocessing, model."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: Path):
    self.config, self.workdir = config, Path(workdir)
    self.train_ds, self.test_ds = agile_data.load(
      config.dataset, data_dir=config.data_dir or None, limit=config.limit or None
    )
    self.prep = agile_data.make_preprocess(config.dataset, config.input_size)
    self.model = AgileNN(train_lib.model_config(config, self.train_ds.num_classes))

  def path(self, name: str) -> Path:
    return self.workdir / name

  def variables(self) -> dict:
    """The trained AgileNN variables (training first when they are missing)."""
    step_train(self)
    return self._variables()

  @functools.cache  # noqa: B019 - one Run per command
  def _variables(self) -> dict:
    like = init_variables(self.model, jax.random.key(0), (self.config.input_size,) * 2 + (3,))
    return ckpt_lib.load_pytree(self.path("agile_variables"), like, rerun="edgeinfer agile train")

  @functools.cache  # noqa: B019
  def jax_outputs(self) -> tuple[np.ndarray, np.ndarray]:
    """(combined logits, remote symbols) of the trained JAX model on the whole test set."""
    return device_symbols(
      self.model, self.variables(), self.test_ds, self.prep, self.config.train.eval_batch_size
    )


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
  x = jax.numpy.zeros((1, input_size, input_size, 3), jax.numpy.float32)
  _, idx = model.apply(variables, x, method=AgileNN.device)
  q = model.apply(variables, idx, method=AgileNN.dequantize)
  device_macs = pl.count_macs(lambda a: model.apply(variables, a, method=AgileNN.device), x)
  remote_macs = pl.count_macs(lambda a: model.apply(variables, a, method=AgileNN.remote), q)
  p = variables["params"]
  return {
    "device_macs": device_macs,
    "remote_macs": remote_macs,
    "device_params": count_params([p["fe"], p["local"], p["quantizer"], p["combiner"]]),
    "remote_params": count_params(p["remote_predictor"]),
    "remote_feature_shape": list(q.shape[1:]),
  }


def step_train(run: Run) -> dict:
  out = run.path("train.json")
  if out.exists() and run.path("agile_variables").exists():
    result = safeio.load_json(out, what="training result", keys=("accuracy", "k"))
    run._variables()  # what a step skips to must be readable
    return result
  provenance.record_all(
    run.workdir, run.config, DEPS, "reference", "checkpoints", "agile_variables", "train.json"
  )
  final, variables = train_lib.train_agile(run.config, run.workdir, run.train_ds, run.test_ds, run.prep)
  ckpt_lib.save_pytree(run.path("agile_variables"), variables)
  write_json(out, final)
  return final


def step_evaluate(run: Run) -> dict:
  out = run.path("evaluate.json")
  if out.exists():
    return safeio.load_json(out, what="evaluation result", keys=("payload", "costs", "latency"))
  c = run.config
  _, symbols = run.jax_outputs()
  provenance.record(out, c, DEPS["evaluate.json"])
  payload = pl.payload_report(symbols, c.model.num_centroids)
  costs = cost_summary(run.model, run.variables(), c.input_size)
  lm = pl.LatencyModel(**c.latency.to_dict())
  raw_bits = float(np.prod(run.test_ds.image_shape) * 8)
  table = pl.latency_table(
    lm, device_macs=costs["device_macs"], device_params=costs["device_params"], remote_macs=costs["remote_macs"],
    remote_params=costs["remote_params"], payload_bits=payload["best_codec_bits_per_image"], raw_image_bits=raw_bits,
  )  # fmt: skip
  res = {"payload": payload, "costs": costs, "latency": table}
  write_json(out, res)
  return res


def _evaluate_summary(run: Run) -> dict:
  """evaluate.json with its headline numbers at the top (the command's summary line)."""
  res = step_evaluate(run)
  return {
    "payload_bits": res["payload"]["best_codec_bits_per_image"],
    "device_macs": res["costs"]["device_macs"],
    "agile_latency_ms": 1e3 * res["latency"][0]["total_s"],
    **res,
  }


def step_export(run: Run) -> dict | None:
  from agile import export as agile_export

  out = run.path("export.json")
  config, test_ds, prep = run.config, run.test_ds, run.prep
  step_evaluate(run)
  if not config.export.enabled:
    return None
  if out.exists():
    return safeio.load_json(out, what="export result", keys=("parity_images",))
  jax_logits, _ = run.jax_outputs()
  provenance.record(out, config, DEPS["export.json"])
  n_cal = min(config.export.calibration_images, len(test_ds))
  n_par = len(test_ds) if not config.export.parity_images else min(config.export.parity_images, len(test_ds))
  x_all = np.asarray(prep(test_ds.images[:n_par]))
  rng = np.random.default_rng(config.seed)
  cal_idx = rng.choice(len(test_ds), n_cal, replace=False)
  calibration = np.asarray(prep(test_ds.images[cal_idx]))
  exp = agile_export.export_all(
    run.model,
    run.variables(),
    x_all[:1],
    calibration,
    run.path("exports"),
    parity_x=x_all,
    ram_bytes=micro.target_ram_bytes(config, "export.target_ram_bytes"),
  )
  labels = test_ds.labels[:n_par]
  ref_top1 = jax_logits[:n_par].argmax(-1)
  res = {k: v for k, v in exp.items() if v is None or isinstance(v, int | float | list)}
  for kind in ("float", "int8"):
    split = agile_export.split_inference(exp[f"device_{kind}"], exp["remote_onnx"], exp["meta"], x_all)
    res[f"{kind}_split_top1_agreement_with_jax"] = float(np.mean(split["combined"].argmax(-1) == ref_top1))
    res[f"{kind}_split_accuracy"] = float(np.mean(split["combined"].argmax(-1) == labels))
  res["parity_images"] = n_par
  write_json(out, res)
  return res


def final_metrics(workdir: Path) -> dict[str, Any] | None:
  """The steps' results merged (training metrics, payload, costs, latency, export), or None before
  `evaluate` has run; written to workdir/final_metrics.json."""
  final = safeio.load_json_if_present(workdir / "train.json", what="training result")
  ev = safeio.load_json_if_present(workdir / "evaluate.json", what="evaluation result")
  if final is None or ev is None:
    return None
  metrics = {**final, **ev}
  exp = safeio.load_json_if_present(workdir / "export.json", what="export result")
  if exp is not None:
    metrics["export"] = exp
  write_json(workdir / "final_metrics.json", metrics)
  return metrics


def _write_reports(run: Run) -> None:
  final_metrics(run.workdir)
  report.write_report(run.config, run.workdir)


def _reported(step):
  return app.reported(step, _write_reports)


STEPS = {
  "train": app.Step(
    _reported(step_train), "train (or resume) the reference network, then AgileNN; train.json"
  ),
  "evaluate": app.Step(
    _reported(_evaluate_summary), "payload, MACs/parameters, latency model; evaluate.json"
  ),
  "export": app.Step(
    _reported(step_export), "device TFLite float/int8 + TFLM, remote ONNX, parity; export.json"
  ),
  **runner.app_steps("agile", lambda run: run.config),
}
ALL = ("train", "evaluate", "export")


def run_all(config: ml_collections.ConfigDict, workdir: str | Path) -> dict[str, Any]:
  """Every step into `workdir` (what `edgeinfer agile all` runs, without the command line);
  returns the final metrics (also in workdir/final_metrics.json)."""
  spec = app.App("agile", STEPS, validate=validate, preflight=preflight, context=Run)
  app.run_steps(spec, config, workdir, ALL)
  return final_metrics(Path(workdir))
