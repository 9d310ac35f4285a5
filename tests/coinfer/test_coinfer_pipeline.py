"""The whole pipeline on a tiny config (the quickstart stage with fast=True): every CLI step runs,
the report is written, and device TFLite + server ONNX agree with JAX on top-1 at three setups."""

import json
import subprocess
import sys

import pytest


@pytest.fixture(scope="module")
def result(coinfer_fast_run):
  return coinfer_fast_run


def test_pipeline_writes_report_and_numbers(result):
  workdir, out = result
  report = (workdir / "report.md").read_text()
  assert "Accuracy loss" in report and "Controllers per trace" in report and "Export parity" in report
  assert (workdir / "accuracy_vs_rate.png").exists() and (workdir / "miss_rate.png").exists()
  # the loss row carries its paired-bootstrap interval: per-image results were kept for both sides
  assert "mean 95% CI" in report and (workdir / "individual_correct.npy").exists()
  ci_row = next(line for line in report.splitlines() if line.startswith("| I-D-C"))
  assert ci_row.count("[") == 1, ci_row
  assert 0.0 <= out["init_accuracy"] <= 1.0
  clusters = json.loads((workdir / "cluster.json").read_text())["clusters"]
  assert len(clusters) == 2 and sorted(i for c in clusters for i in c) == list(range(9))
  sim = json.loads((workdir / "simulate.json").read_text())["traces"]
  assert set(next(iter(sim.values()))["controllers"]) == {"mpc", "fixed", "rate", "buffer", "oracle"}


def test_metrics_rows_name_the_training_that_wrote_them(result):
  workdir, _ = result
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert {r["stage"] for r in rows} == {"init", "distill", "individual", "clio", "spinn"}
  assert {r["ablation"] for r in rows if r["stage"] == "distill"} == {"I-D-C"}
  assert {r["setup"] for r in rows if r["stage"] == "individual"} == {"N1Q1", "N4Q8"}


def test_export_parity_three_setups(result):
  workdir, _ = result
  exp = json.loads((workdir / "export.json").read_text())["setups"]
  assert len(exp) == 3
  for r in exp:
    assert r["top1_agreement"] >= 0.99, r
    assert (workdir / "exports" / r["setup"] / "server.onnx").exists()
    assert (workdir / "exports" / r["setup"] / "device.tflite").exists()
    assert (workdir / "exports" / r["setup"] / "device_int8.tflite").exists()
    # the model-repository copy, fed the packed wire tensors, agrees with JAX as well
    assert (workdir / "exports" / "repository" / r["model"] / "config.pbtxt").exists()
    assert r["wire_top1_agreement"] >= 0.99, r


def test_rerun_skips_every_step_and_other_values_are_refused(result):
  from coinfer import pipeline
  from common import app

  workdir, _ = result
  metrics, sim = (workdir / "metrics.jsonl").read_bytes(), json.loads((workdir / "simulate.json").read_text())
  out = pipeline.run_steps(app.load_config_file("coinfer/configs/quick.py:fast"), workdir)
  assert (workdir / "metrics.jsonl").read_bytes() == metrics  # nothing trained again
  assert out["simulate"] == sim and out["init"]["teacher"] == "N4Q8"
  cmd = [sys.executable, "-m", "coinfer.main", "report", "--config=coinfer/configs/quick.py:fast"]
  r = subprocess.run([*cmd, f"--workdir={workdir}", "--config.init.epochs=2"], capture_output=True, text=True)
  assert r.returncode == 2 and "config.init.epochs was 1, now 2" in r.stderr, r.stderr[-2000:]
