"""common.export: float TFLite and ONNX round trips, int8 TFLite top-1, TFLite Micro C arrays."""

import shutil
import subprocess

import jax
import numpy as np
import optax
import pytest

from common import classifier, data, export, models
from common import train as train_lib


@pytest.fixture(scope="module")
def trained():
  """A small conv net with batch norm, trained briefly on digits."""
  train_ds, test_ds = data.load("digits")
  mean, std = data.channel_stats(train_ds)
  model = models.SmallCNN(widths=(8, 16, 32))
  tx = optax.adam(optax.cosine_decay_schedule(1e-2, 8 * (len(train_ds) // 64)))
  state = classifier.init_state(model, tx, jax.random.key(0), train_ds.image_shape)
  step, _ = classifier.make_steps(model, tx, mean=mean, std=std, augment=False)
  key = jax.random.key(1)
  for epoch in range(8):
    for i, batch in enumerate(data.batches(train_ds, 64, key=jax.random.fold_in(key, epoch))):
      state, _ = step(state, batch, jax.random.fold_in(key, 1000 * epoch + i))
  predict = jax.jit(classifier.predict_fn(model, state, mean=mean, std=std))
  acc = float(np.mean(np.argmax(predict(test_ds.images), -1) == test_ds.labels))
  assert acc > 0.85, acc
  return predict, train_ds, test_ds


@pytest.fixture(scope="module")
def float_tflite(trained):
  predict, _, test_ds = trained
  return export.to_tflite(predict, test_ds.images[:8])


def test_float_tflite_and_onnx_round_trip(trained, float_tflite):
  predict, _, test_ds = trained
  onnx_model = export.tflite_to_onnx(float_tflite)
  par = export.check_parity(predict, float_tflite, test_ds.images[:100], onnx_model=onnx_model)
  assert par.tflite_max_abs_err <= 1e-4
  assert par.onnx_max_abs_err <= 1e-4
  assert par.tflite_top1_agreement == 1.0


def test_int8_tflite_agrees_on_top1(trained):
  predict, train_ds, test_ds = trained
  rep = [train_ds.images[i : i + 1] for i in range(200)]
  t8 = export.to_tflite(predict, test_ds.images[:1], int8=True, representative_data=rep)
  ins, outs = export.tflite_io(t8)
  assert ins[0].dtype == np.int8 and outs[0].dtype == np.int8
  par = export.check_parity(predict, t8, test_ds.images)
  assert par.tflite_top1_agreement >= 0.95


def test_int8_needs_representative_data(trained):
  from common.errors import ExportError

  predict, _, test_ds = trained
  with pytest.raises(ExportError, match="representative"):
    export.to_tflite(predict, test_ds.images[:1], int8=True)


def test_run_tflite_handles_any_batch_size(trained, float_tflite):
  predict, _, test_ds = trained
  out = export.run_tflite(float_tflite, test_ds.images[:13])[0]  # exported at batch 8
  np.testing.assert_allclose(out, predict(test_ds.images[:13]), atol=1e-4)


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")
def test_c_array_compiles(float_tflite, tmp_path):
  out = export.to_c_array(float_tflite, "edge_model", tmp_path)
  assert out["model_bytes"] == len(float_tflite)
  header, source = tmp_path / "edge_model.h", tmp_path / "edge_model.cc"
  assert header.exists() and source.exists()
  subprocess.run(["gcc", "-c", "-x", "c++-header", str(header), "-o", str(tmp_path / "h.gch")], check=True)
  subprocess.run(["gcc", "-c", str(source), "-o", str(tmp_path / "m.o"), "-I", str(tmp_path)], check=True)
  # The bytes in the array are the flatbuffer's bytes.
  text = source.read_text()
  first = [int(t, 16) for t in text.split("{", 1)[1].split(",")[:12]]
  assert bytes(first) == float_tflite[:12]


def test_write_atomic_leaves_no_partial_file(tmp_path):
  target = tmp_path / "x.bin"
  export.write_atomic(target, b"abc")
  assert target.read_bytes() == b"abc"
  assert [p.name for p in tmp_path.iterdir()] == ["x.bin"]


def test_train_state_roundtrip_helpers():
  # cross_entropy and accuracy with a mask ignore the padded rows.
  logits = np.array([[2.0, 0.0], [0.0, 2.0], [5.0, 0.0]], np.float32)
  labels = np.array([0, 0, 1])
  mask = np.array([1.0, 1.0, 0.0], np.float32)
  assert float(train_lib.accuracy(logits, labels, mask)) == pytest.approx(0.5)
  ref = np.mean([np.log1p(np.exp(-2.0)), np.log1p(np.exp(2.0))])
  assert float(train_lib.cross_entropy(logits, labels, mask)) == pytest.approx(ref, rel=1e-5)


@pytest.fixture(scope="module")
def int8_tflite(trained):
  predict, train_ds, test_ds = trained
  rep = [train_ds.images[i : i + 1] for i in range(100)]
  return export.to_tflite(predict, test_ds.images[:1], int8=True, representative_data=rep)


def test_int8_runs_under_tflite_micro_in_the_measured_arena(trained, int8_tflite):
  from common import micro

  _, _, test_ds = trained
  m = micro.check_int8(int8_tflite, test_ds.images[:200], ram_bytes=320 * 1024)
  assert m.fits and m.images == 200 and m.flash_bytes == len(int8_tflite)
  assert {"CONV_2D", "FULLY_CONNECTED"} <= set(m.ops)
  # A real measurement: the arena loads, 16 bytes less does not, and the recording allocator agrees.
  assert micro.loads(int8_tflite, m.arena_bytes) and not micro.loads(int8_tflite, m.arena_bytes - 16)
  assert m.recorded_arena_bytes <= m.arena_bytes
  # TFLM's outputs, run here again at that arena, are LiteRT's within the reported steps.
  got = micro.run_micro(micro.interpreter(int8_tflite, m.arena_bytes), 1, test_ds.images[:50])[0]
  lite = export.run_tflite(int8_tflite, test_ds.images[:50])[0]
  step = micro.output_steps(int8_tflite)[0]
  assert np.abs(got - lite).max() <= m.max_lsb_diff * step + 1e-6
  assert np.mean(got.argmax(-1) == lite.argmax(-1)) >= 0.95
  if not m.bit_exact:
    assert m.divergent_ops  # where the difference starts is named


def test_arena_over_the_target_ram_is_refused(trained, int8_tflite):
  from common import micro
  from common.errors import ExportError

  _, _, test_ds = trained
  with pytest.raises(ExportError, match=r"needs a \d+-byte tensor arena.*4096 bytes of RAM \(ram\)"):
    micro.check_int8(int8_tflite, test_ds.images[:4], ram_bytes=4096, ram_key="ram")


def test_op_tflite_micro_lacks_is_refused_naming_it():
  from common import micro
  from common.errors import ExportError

  rng = np.random.default_rng(0)
  x = rng.normal(size=(1, 8)).astype(np.float32)
  rep = [rng.normal(size=(1, 8)).astype(np.float32) for _ in range(16)]
  t8 = export.to_tflite(
    lambda v: jax.nn.gelu(2.0 * v, approximate=False), x, int8=True, representative_data=rep
  )
  assert "SELECT" in micro.model_ops(t8)  # TFLite's int8 erf path; TFLM has SELECT_V2 only
  with pytest.raises(ExportError, match="TensorFlow Lite Micro has no kernel for op SELECT "):
    micro.check_int8(t8, x, name="gelu")
