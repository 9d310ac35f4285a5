"""Quickstart stage `common`: a small CNN on digits through the shared layer, end to end.

Trains `common.models.SmallCNN` with `common.train.fit` (checkpoints, resume,
metrics.jsonl), evaluates it, exports it to float TFLite, int8 TFLite, ONNX and
a TFLite Micro C array, checks parity of each against JAX, and writes
`report.md` with the training curves.
"""

from __future__ import annotations

import time
from pathlib import Path

import jax
import ml_collections
import numpy as np
import optax

from common import classifier, cli, data, export, micro, models, report
from common import config as cfg
from common import train as train_lib


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks every key the stage reads (raises ConfigError naming key, value, range)."""
  from common import app

  cfg.check_types(config, app.load_config_file("launch/configs/quickstart.py"))
  cfg.check_seed(config)
  cfg.check_numbers(config)
  cfg.check_range(config, "data.image_size", 8, 512, integer=True)
  cfg.check_range(config, "data.limit", 0, integer=True)
  cfg.check_positive_ints(config, "model.widths")
  cfg.check_range(config, "model.num_classes", 2, integer=True)
  cfg.check_range(config, "train.num_epochs", 1, 10_000, integer=True)
  cfg.check_range(config, "train.batch_size", 1, 65_536, integer=True)
  cfg.check_range(config, "train.learning_rate", 0.0, 10.0, lo_open=True)
  cfg.check_range(config, "train.eval_every", 0, integer=True)
  cfg.check_range(config, "train.checkpoint_every", 0, integer=True)
  cfg.check_range(config, "train.keep", 1, integer=True)
  cfg.check_range(config, "export.representative_examples", 1, 100_000, integer=True)
  micro.target_ram_bytes(config, "export.target_ram_bytes")


def train(config: ml_collections.ConfigDict, workdir: Path, *, show_progress: bool = True):
  """Trains the classifier; returns (model, state, test set, normalisation stats, history)."""
  validate(config)
  key = jax.random.key(config.seed)
  init_key, train_key = jax.random.split(key)
  train_ds, test_ds = data.load(
    config.data.name,
    data_dir=config.data.data_dir or None,
    image_size=config.data.image_size,
    limit=config.data.limit or None,
  )
  mean, std = data.channel_stats(train_ds)
  model = models.SmallCNN(widths=tuple(config.model.widths), num_classes=train_ds.num_classes)
  steps = data.num_batches(len(train_ds), config.train.batch_size, drop_last=True) * config.train.num_epochs
  tx = optax.adam(optax.cosine_decay_schedule(config.train.learning_rate, steps))
  state = classifier.init_state(model, tx, init_key, train_ds.image_shape)
  train_step, eval_step = classifier.make_steps(model, tx, mean=mean, std=std)
  loop = train_lib.LoopConfig(
    num_epochs=config.train.num_epochs,
    batch_size=config.train.batch_size,
    eval_every=config.train.eval_every,
    checkpoint_every=config.train.checkpoint_every,
    keep=config.train.keep,
    desc="common: SmallCNN",
  )
  state, history = train_lib.fit(
    state,
    train_step,
    train_ds,
    loop,
    key=train_key,
    workdir=workdir,
    evaluate=lambda s: train_lib.evaluate_batches(eval_step, s, test_ds, 256),
    show_progress=show_progress,
  )
  return model, state, train_ds, test_ds, (mean, std), history


def run(workdir: Path, *, fast: bool = False, config: ml_collections.ConfigDict | None = None) -> dict:
  """Trains, exports and reports; returns headline numbers."""
  from common import app

  config = config or app.load_config_file("launch/configs/quickstart.py" + (":fast" if fast else ""))
  workdir = Path(workdir)
  validate(config)  # before anything is written: a rejected config leaves the workdir as it was
  cli.save_config(config, workdir)
  t0 = time.time()
  model, state, train_ds, test_ds, (mean, std), history = train(config, workdir)
  train_s = time.time() - t0
  result = {"test_accuracy": history[-1]["accuracy"], "train_seconds": train_s}
  rep = report.Report("Quickstart: SmallCNN on digits through common/", workdir)
  rep.text(
    f"Data `{config.data.name}`: {len(train_ds)} training and {len(test_ds)} test images of shape "
    f"{train_ds.image_shape}. Model: SmallCNN widths {tuple(config.model.widths)}. "
    f"Trained {config.train.num_epochs} epochs in {train_s:.1f} s; final test accuracy "
    f"{result['test_accuracy']:.4f}."
  )
  rows = train_lib.MetricsWriter(workdir).read()
  tr = [r for r in rows if r.get("split") == "train"]
  ev = [r for r in rows if r.get("split") == "eval"]
  rep.line_plot(
    "curves.png",
    {
      "train loss": ([r["step"] for r in tr], [r["loss"] for r in tr]),
      "test loss": ([r["step"] for r in ev], [r["loss"] for r in ev]),
      "test accuracy": ([r["step"] for r in ev], [r["accuracy"] for r in ev]),
    },
    xlabel="step",
    ylabel="value",
    title="training curves",
  )
  if config.export.enabled:
    result.update(export_all(model, state, train_ds, test_ds, mean, std, config, workdir, rep))
  rep.write()
  report.write_json(workdir / "summary.json", result)
  return result


def export_all(model, state, train_ds, test_ds, mean, std, config, workdir: Path, rep: report.Report) -> dict:
  """Float and int8 TFLite, ONNX, C array; parity of each against JAX."""
  predict = jax.jit(classifier.predict_fn(model, state, mean=mean, std=std))
  example = test_ds.images[:1]
  out = workdir / "exports"
  tfl = export.to_tflite(predict, example)
  export.write_atomic(out / "model_float.tflite", tfl)
  onnx_model = export.tflite_to_onnx(tfl)
  export.save_onnx(onnx_model, out / "model.onnx")
  par = export.check_parity(predict, tfl, test_ds.images, onnx_model=onnx_model)
  rows = [
    ["TFLite float32", len(tfl), par.tflite_max_abs_err, par.tflite_top1_agreement],
    [
      "ONNX (from TFLite)",
      len(onnx_model.SerializeToString()),
      par.onnx_max_abs_err,
      par.onnx_top1_agreement,
    ],
  ]
  result = {"float_max_abs_err": par.tflite_max_abs_err, "onnx_max_abs_err": par.onnx_max_abs_err}
  if config.export.int8:
    n = config.export.representative_examples
    rep_data = [train_ds.images[i : i + 1] for i in range(min(n, len(train_ds)))]
    t8 = export.to_tflite(predict, example, int8=True, representative_data=rep_data)
    mcu = micro.check_int8(  # refused (nothing int8 written) when TFLite Micro cannot run it
      t8,
      test_ds.images,
      ram_bytes=micro.target_ram_bytes(config, "export.target_ram_bytes"),
      name="quickstart model (int8)",
      ram_key="export.target_ram_bytes",
    )
    export.write_atomic(out / "model_int8.tflite", t8)
    carr = export.to_c_array(t8, "quickstart_model", out / "micro")
    p8 = export.check_parity(predict, t8, test_ds.images)
    rows.append(["TFLite int8 (int8 I/O)", len(t8), p8.tflite_max_abs_err, p8.tflite_top1_agreement])
    result.update({"int8_top1_agreement": p8.tflite_top1_agreement, "int8_bytes": len(t8)})
    result.update(mcu.as_dict("int8_micro_"))
    rep.text(f"TFLite Micro C array: `exports/micro/quickstart_model.{{h,cc}}`, {carr['model_bytes']} bytes.")
    rep.text(
      "The int8 model under TensorFlow Lite Micro's own interpreter, against LiteRT on the "
      f"{len(test_ds)} test images; the arena is the smallest that allocates ({micro.ARENA_STEP}-byte "
      f"bisection). Ops: {', '.join(mcu.ops)}."
    )
    rep.table(micro.MICRO_COLUMNS, [micro.micro_cells(result, "int8_micro_")])
  rep.heading("Exports")
  rep.table(["format", "bytes", "max abs error vs JAX", "top-1 agreement"], rows)
  acc_lite = float(np.mean(np.argmax(export.run_tflite(tfl, test_ds.images)[0], -1) == test_ds.labels))
  rep.text(f"Float TFLite test accuracy: {acc_lite:.4f}.")
  return result
