"""End to end: the quickstart stage (fast), resume, exports, config and CLI errors."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from common import app
from common.errors import ConfigError
from launch.stages import offload as stage
from offload import pipeline

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def stage_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("offload_stage")
  return workdir, stage.run(workdir, fast=True)


def test_stage_writes_report_arrays_and_exports(stage_run):
  workdir, out = stage_run
  text = (workdir / "report.md").read_text()
  for word in ("Average loss per image", "MDP", "DQN", "lower bound", "Exports", "loss_vs_rate.png"):
    assert word in text
  assert (workdir / "loss_vs_rate.png").stat().st_size > 1000
  arrays = np.load(workdir / "result.npz")
  assert arrays["mdp_loss"].shape == (2,) and np.all(np.isfinite(arrays["dqn_loss"]))
  assert np.all(arrays["strong"] <= arrays["mdp_loss"]) and np.all(arrays["mdp_loss"] <= arrays["weak"])
  assert out["dqn_tflite_decision_agreement"] == 1.0
  for name in ("dqn_float.tflite", "dqn.onnx", "mdp_r0.1_b4.0.json"):
    assert (workdir / "exports" / name).exists()
  assert len(list((workdir / "metrics").glob("fold*_cost0.npz"))) == 3  # one metrics file per fold
  for word in ("Many cameras behind one switch", "score map", "Switch occupancy", "Robustness"):
    assert word in text
  for name in (
    "multicam_scores.png",
    "multicam_occupancy.png",
    "multicam_loss_r0.1_b1.0.png",
    "robust_r0.1.png",
  ):
    assert (workdir / name).stat().st_size > 1000
  assert len(out["multicam_hierarchical_loss"]) == len(out["multicam_cameras"]) == 2
  # A rerun of every step finds its outputs and skips (simulate: results.json of this checkpoint).
  steps = (*pipeline.ALL, *pipeline.STUDIES)
  again = pipeline.run_steps(steps, app.load_config_file("offload/configs/quick.py:fast"), workdir)
  assert all(again[name].get("skipped") for name in steps), again
  assert again["simulate"]["losses"] == json.loads((workdir / "results.json").read_text())["losses"]


def test_training_resumes_from_checkpoint(stage_run):
  workdir, _ = stage_run
  c = app.load_config_file("offload/configs/quick.py:fast")  # the stage's config, continued to 12 iterations
  c.dqn.iterations, c.dqn.log_every = 12, 1  # (neither is in the checkpoints' config stamp)
  out = pipeline.run_steps(("train",), c, workdir, show_progress=False)["train"]
  assert out["iterations"] == 12
  rows = [r for r in (workdir / "metrics.jsonl").read_text().splitlines() if r.strip()]
  assert '"step": 11' in rows[-2] and '"step": 12' in rows[-1]  # continued from iteration 10
  last = json.loads(rows[-1])
  assert last["devices"] == 1 and last["processes"] == 1 and last["examples_per_s"] > 0


def test_config_errors_name_the_key():
  # Bad values as `--config.KEY=VALUE` gives them (ml_collections' flattened overrides).
  c = app.load_config_file("offload/configs/quick.py:tiny")
  c.update_from_flattened_dict({"bucket.depths": (4.0,)})
  with pytest.raises(ConfigError, match=r"config.bucket.rates .* config.bucket.depths"):
    pipeline.validate(c)
  c = app.load_config_file("offload/configs/quick.py:tiny")
  c.update_from_flattened_dict({"bucket.rates": (1.5, 0.1)})
  with pytest.raises(ConfigError, match=r"config.bucket.rates\[0\] = 1.5"):
    pipeline.validate(c)


def test_cli_rejects_malformed_npz(tmp_path):
  bad = tmp_path / "bad.npz"
  np.savez(bad, metric_tr=np.ones(5), metric_ts=np.ones(5))
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "offload.main",
      "train",
      f"--config={ROOT / 'offload/configs/quick.py'}",
      f"--workdir={tmp_path / 'run'}",
      "--config.metrics.source=npz",
      f"--config.metrics.file={bad}",
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert proc.returncode == 2
  assert "lacks the key(s)" in proc.stderr and "Traceback" not in proc.stderr
