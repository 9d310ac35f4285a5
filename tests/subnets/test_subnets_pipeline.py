"""Smoke run of every step (tiny), joint-training pieces, configs and the CLI's error path."""

import json
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from common import app
from common.errors import ConfigError
from subnets import losses, models, pipeline, surgery
from subnets import train as train_lib


def _tiny():
  return app.load_config_file("subnets/configs/quick.py:tiny")


def test_loss_weights_are_normalised_sqrt_param_fractions():
  cfg = models.ModelConfig(widths=(4, 6), dw_strides=(1,), num_classes=3)
  shape = (6, 6, 2)
  ws = [(1, 2), (2, 3), (4, 6)]
  p = np.array([models.param_count(cfg.with_widths(w), shape, include_bn=False) for w in ws], float)
  ref = np.sqrt(p / p[-1]) / np.sqrt(p / p[-1]).sum()
  np.testing.assert_allclose(losses.loss_weights(cfg, ws, shape), ref, rtol=1e-12)


def test_bn_stage_changes_only_bn_and_weights_stage_freezes_bn():
  cfg = models.ModelConfig(widths=(4, 6), dw_strides=(1,), num_classes=3)
  v = models.init_variables(cfg, jax.random.key(0), (6, 6, 3))
  for part in ("weights", "bn"):
    labels = train_lib._labels(v["params"], part)
    tx = optax.multi_transform({"train": optax.sgd(0.1), "freeze": optax.set_to_zero()}, labels)
    g = jax.tree_util.tree_map(np.ones_like, v["params"])
    upd, _ = tx.update(g, tx.init(v["params"]), v["params"])
    for mod, leaves in upd.items():
      moved = any(np.any(np.asarray(a) != 0) for a in jax.tree_util.tree_leaves(leaves))
      assert moved == (("bn" in mod) == (part == "bn")), (part, mod)


def test_joint_step_traced_once_and_decreases_loss(monkeypatch):
  # The step computes its loss once per trace: a second trace fails here.
  monkeypatch.setattr(losses, "joint_loss", chex.assert_max_traces(losses.joint_loss, n=1))
  cfg = models.ModelConfig(widths=(4, 6), dw_strides=(1,), num_classes=3)
  v = models.init_variables(cfg, jax.random.key(0), (6, 6, 3))
  ws = [(2, 3), (4, 6)]
  tx = optax.adam(1e-2)
  step, _ = train_lib.make_joint_steps(
    cfg, ws, tx, mean=0.0, std=1.0, pis=np.array([0.4, 0.6]), augment=False
  )
  from common import train as ct

  state = ct.create_train_state(jax.tree_util.tree_map(jnp.array, v), tx)
  rng = np.random.default_rng(0)
  batch = {
    "image": rng.uniform(size=(8, 6, 6, 3)).astype(np.float32),
    "label": rng.integers(0, 3, 8).astype(np.int32),
  }
  seen = []
  for i in range(6):
    state, m = step(state, batch, jax.random.key(i))
    seen.append(float(m["loss"]))
  assert seen[-1] < seen[0]


def test_pipeline_smoke_end_to_end(tmp_path):
  c = _tiny()  # no baselines: they share the fine-tuning code path; keep the smoke small
  pipeline.run_step("finetune", c, tmp_path, show_progress=False)
  ks = json.loads((tmp_path / "knapsack.json").read_text())
  ws = ks["methods"]["reds"]["widths"]
  for a, b in zip(ws, ws[1:], strict=False):
    assert all(x <= y for x, y in zip(a, b, strict=False))
  assert ws[-1] == [6, 8, 8]
  dense = ks["chain_dense_macs"]
  costs = models.chain_costs(models.ModelConfig(widths=(6, 8, 8), dw_strides=(2, 1)), (8, 8, 3))
  for b, w in zip(ks["budgets"], ws, strict=False):
    assert costs.chain_macs(w) <= b * dense + 1e-6
  ft = json.loads((tmp_path / "finetune.json").read_text())
  assert set(ft["methods"]) == {"reds"}
  # default finetune.bn_stats = "per_subnet": own statistics saved, both accuracies reported
  assert (tmp_path / "reds_bn_stats").exists() and len(ft["methods"]["reds"]["accuracy_stored_bn"]) == len(ws)
  uni = ks["methods"]["uniform"]["widths"]
  for b, w in zip(ks["budgets"], uni, strict=False):
    assert costs.chain_macs(w) <= b * dense + 1e-6
  text = (tmp_path / "report.md").read_text()
  assert "accuracy_vs_macs.png" in text and "Knapsack" in text
  # The permuted dense model (REDS order) before fine-tuning has the dense accuracy.
  assert ft["methods"]["reds"]["accuracy_before"][-1] == pytest.approx(ft["dense_accuracy"], abs=1e-9)
  # Resuming: the step finds its outputs and returns them without training again.
  again = pipeline.run_step("finetune", c, tmp_path, show_progress=False)
  assert again == ft


def test_export_round_trip(tmp_path):
  from common import data as data_lib
  from common import micro
  from subnets.export import export_subnets, tflm_switching

  cfg = models.ModelConfig(widths=(6, 8, 8), dw_strides=(2, 1), num_classes=10)
  rng = np.random.default_rng(0)
  ds = data_lib.Dataset(rng.uniform(size=(40, 8, 8, 3)).astype(np.float32), rng.integers(0, 10, 40).astype(np.int32),
                        10, "toy")  # fmt: skip
  v = models.init_variables(cfg, jax.random.key(0), (8, 8, 3))
  rows = export_subnets(cfg, v, [(2, 3, 4), (6, 8, 8)], ["small", "dense"], ds, ds, mean=0.5, std=0.3,
                        out_dir=tmp_path, int8=True, representative_examples=16, latency_repeats=3)  # fmt: skip
  assert [r["params"] for r in rows] == [
    models.param_count(cfg.with_widths(w), (8, 8, 3)) for w in [(2, 3, 4), cfg.widths]
  ]
  for r in rows:
    assert r["float_max_abs_err"] < 1e-4 and r["float_latency_us"] > 0 and r["int8_bytes"] > 0
  assert rows[0]["float_bytes"] < rows[1]["float_bytes"]
  assert (tmp_path / "micro" / "reds_small.cc").exists() and (tmp_path / "reds_small_int8.tflite").exists()
  # Every int8 subnetwork ran under TFLite Micro in its measured arena, and not in less.
  fbs = [(tmp_path / r["int8_file"]).read_bytes() for r in rows]
  for r, fb in zip(rows, fbs, strict=True):
    assert r["micro_fits"] and r["micro_images"] == 40 and r["micro_flash_bytes"] == len(fb)
    assert micro.loads(fb, r["micro_arena_bytes"]) and not micro.loads(
      fb, r["micro_arena_bytes"] - micro.ARENA_STEP
    )
  assert rows[0]["micro_arena_bytes"] < rows[1]["micro_arena_bytes"]
  sw = tflm_switching(fbs, ds.images[:1], repeats=5)
  assert sw["arena_bytes"] == [r["micro_arena_bytes"] for r in rows] and sw["shared_arena_switch_us"] > 0
  # A subnetwork whose arena does not fit the RAM is refused: its row says so, no int8 file is written.
  out = tmp_path / "short"
  short = export_subnets(cfg, v, [(2, 3, 4)], ["small"], ds, ds, mean=0.5, std=0.3, out_dir=out,
                         int8=True, representative_examples=16, latency_repeats=3, ram_bytes=1024)  # fmt: skip
  assert "does not fit the target's 1024 bytes of RAM" in short[0]["micro_refused"]
  assert not (out / "reds_small_int8.tflite").exists() and not (out / "micro").exists()
  # with each subnetwork's own BN statistics, the export folds them in (its accuracy is the model's)
  from subnets import bnstats

  ws = [(2, 3, 4)]
  stats = bnstats.recalibrate(
    cfg, v, ws, ds, mean=0.5, std=0.3, batch_size=20, num_batches=2, key=jax.random.key(0)
  )
  rows = export_subnets(cfg, v, ws, ["own"], ds, ds, mean=0.5, std=0.3, stats_list=stats, out_dir=tmp_path,
                        int8=False, latency_repeats=2)  # fmt: skip
  assert rows[0]["float_accuracy"] == bnstats.evaluate(cfg, v, ws, stats, ds, mean=0.5, std=0.3)[0]


def test_bad_config_names_key():
  c = _tiny()
  c.knapsack.budgets = (0.5, 0.25)
  with pytest.raises(ConfigError, match="knapsack.budgets"):
    pipeline.validate(c)
  c = _tiny()
  c.baselines.methods = ("slimmable",)
  with pytest.raises(ConfigError, match="baselines.methods"):
    pipeline.validate(c)


def test_cli_infeasible_budget_exits_2_with_message(tmp_path):
  cmd = [sys.executable, "-m", "subnets.main", "knapsack", "--config", "subnets/configs/quick.py",
         "--workdir", str(tmp_path), "--config.knapsack.budgets=(0.001,)", "--config.knapsack.min_width=4",
         "--config.data.image_size=8", "--config.data.limit=128", "--config.pretrain.epochs=1",
         "--config.importance.num_batches=1"]  # fmt: skip
  r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
  assert r.returncode == 2, r.stderr[-2000:]
  assert "smallest feasible budget" in r.stderr and "Traceback" not in r.stderr


def test_scores_rank_units_and_permutation_sorts_them():
  cfg = models.ModelConfig(widths=(5, 4), dw_strides=(1,), num_classes=3)
  scores = [np.array([0.1, 3.0, 2.0, 0.5, 1.0]), np.array([1.0, 4.0, 2.0, 3.0])]
  perms = surgery.sort_permutations(scores)
  assert perms[0].tolist() == [1, 2, 4, 3, 0] and perms[1].tolist() == [1, 3, 2, 0]
  v = models.init_variables(cfg, jax.random.key(0), (6, 6, 3))
  pv = surgery.permute_variables(v, cfg, perms)
  np.testing.assert_array_equal(
    pv["params"]["conv0"]["kernel"][..., 0], v["params"]["conv0"]["kernel"][..., 1]
  )
