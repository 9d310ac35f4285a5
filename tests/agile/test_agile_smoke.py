"""A short digits run of every step (quick.py:smoke): skewness rises, payload/latency are consistent,
and the exported device TFLite + remote ONNX + combination agree with JAX (float export)."""

import json

import numpy as np

from agile import payload as pl
from common import app, micro


def _short_run(tmp_path):
  from agile import pipeline

  return pipeline.run_all(app.load_config_file("agile/configs/quick.py:smoke"), tmp_path), tmp_path


def test_short_digits_run_raises_skewness_exports_and_reports(tmp_path):
  # One test, not a module fixture shared by several: under pytest-xdist each
  # worker would rerun the fixture.
  m, workdir = _short_run(tmp_path)
  assert np.isfinite(m["accuracy"])
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  train_skew = [r["skewness"] for r in rows if r["split"] == "train"]
  assert len(train_skew) >= 4
  assert np.mean(train_skew[-2:]) > np.mean(train_skew[:2]) + 0.02, train_skew

  # Export: device TFLite + remote ONNX + combination agree with JAX (float export).
  e = m["export"]
  assert e["parity_images"] >= 256
  assert e["float_split_top1_agreement_with_jax"] >= 0.99
  for name in (
    "agile_device_int8.tflite",
    "agile_device_int8.cc",
    "agile_device_int8.h",
    "agile_remote.onnx",
  ):
    assert (workdir / "exports" / name).stat().st_size > 0
  assert e["device_flash_bytes"] == (workdir / "exports" / "agile_device_int8.tflite").stat().st_size
  assert 0 < e["device_int8_largest_activation_bytes"] <= e["device_int8_largest_op_working_set_bytes"]
  # TFLite Micro ran the written int8 device part in the measured arena, and not in less.
  t8 = (workdir / "exports" / "agile_device_int8.tflite").read_bytes()
  arena = e["device_micro_arena_bytes"]
  assert e["device_micro_fits"] and arena <= e["device_micro_ram_bytes"] == 320 * 1024
  assert micro.loads(t8, arena) and not micro.loads(t8, arena - micro.ARENA_STEP)
  assert e["device_micro_images"] == e["parity_images"] and e["device_micro_max_lsb_diff"] is not None

  # Report, metrics, payload.
  text = (workdir / "report.md").read_text()
  for needle in ("combined", "entropy bound", "Latency model", "skewness_accuracy.png", "TFLM arena B"):
    assert needle in text
  assert (workdir / "skewness_accuracy.png").exists()
  assert json.loads((workdir / "final_metrics.json").read_text())["k"] == 5
  p = m["payload"]
  assert p["raw_bits_per_image"] == 8 * 8 * 19 * 3
  assert p["entropy_bound_bits_per_image"] <= p["raw_bits_per_image"] + 1e-6
  assert p["best_codec_bits_per_image"] == min(p[f"{c}_bits_per_image"] for c in ("zlib", "bz2", "lzma"))


def test_payload_report_hand_values():
  sym = np.zeros((2, 2, 2, 1), np.int64)
  sym[0, 0, 0, 0] = 1  # 7 zeros, 1 one over 8 symbols (4 per image)
  r = pl.payload_report(sym, 2)
  h = -(7 / 8 * np.log2(7 / 8) + 1 / 8 * np.log2(1 / 8))
  assert r["raw_bits_per_image"] == 4
  np.testing.assert_allclose(r["entropy_bound_bits_per_image"], 4 * h)
  assert r["symbol_histogram"] == [7, 1]


def test_latency_table_arithmetic():
  lm = pl.LatencyModel(device_clock_hz=100e6, device_macs_per_cycle=1.0, link_bps=1e6, server_macs_per_s=1e9)
  rows = pl.latency_table(
    lm,
    device_macs=1e6,
    device_params=10,
    remote_macs=1e8,
    remote_params=100,
    payload_bits=1e4,
    raw_image_bits=1e5,
  )
  agile, local, raw = rows
  np.testing.assert_allclose(agile["total_s"], 0.01 + 0.01 + 0.1)
  np.testing.assert_allclose(local["total_s"], 1.01)
  np.testing.assert_allclose(raw["total_s"], 0.1 + 0.101)
