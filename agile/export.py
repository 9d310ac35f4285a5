"""Deployable halves of a trained AgileNN.

Device part (feature extractor + local predictor + quantiser): input the
preprocessed image [1, S, S, 3], outputs (local logits, remote symbols). Exported
as float TFLite (for parity), full-int8 TFLite and a TFLite Micro C array.
Remote part (server): input the dequantised remote features [1, h, w, 24 - k],
output remote logits, as ONNX (through float TFLite and tf2onnx). The device
keeps the centroids and softmax(w / T) to dequantise on the server and to
combine the logits; they are written to exports/agile_meta.json.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from common import export as ex
from common import micro
from common.report import write_json


def _fns(model, variables):
  """(device, remote) functions of the model with grouped depthwise convs (TFLite DEPTHWISE_CONV_2D)."""
  import dataclasses

  from agile.models import AgileNN

  model = AgileNN(dataclasses.replace(model.config, shifted_depthwise=False))

  def device(x):
    return model.apply(variables, x, method=AgileNN.device)

  def remote(q):
    return model.apply(variables, q, method=AgileNN.remote)

  return device, remote


def largest_activation_bytes(tflite_bytes: bytes) -> dict[str, int]:
  """The largest tensor produced by any op, and the largest op's inputs + outputs, in bytes."""
  interp = ex.interpreter(tflite_bytes)
  details = {d["index"]: d for d in interp.get_tensor_details()}

  def nbytes(i: int) -> int:
    d = details.get(i)
    if d is None:
      return 0
    return int(np.prod(d["shape"])) * np.dtype(d["dtype"]).itemsize

  produced = set()
  largest, peak = 0, 0
  for op in interp._get_ops_details():
    outs = [int(i) for i in op["outputs"] if i >= 0]
    produced.update(outs)
    largest = max(largest, *(nbytes(i) for i in outs)) if outs else largest
  inputs = {d["index"] for d in interp.get_input_details()}
  for op in interp._get_ops_details():
    acts = [int(i) for i in list(op["inputs"]) + list(op["outputs"]) if i in produced or i in inputs]
    peak = max(peak, sum(nbytes(i) for i in acts))
  return {"largest_activation_bytes": largest, "largest_op_working_set_bytes": peak}


def _meta(model, variables, input_shape, remote_input_shape) -> dict:
  """What the split inference needs beside the two parts: the codebook, the combination weights, k."""
  from agile.models import AgileNN

  return {
    "centroids": np.asarray(model.apply(variables, method=AgileNN.centroids)).tolist(),
    "combination_weights": np.asarray(model.apply(variables, method=AgileNN.combination_weights)).tolist(),
    "k": model.config.k,
    "input_shape": list(input_shape),
    "remote_input_shape": list(remote_input_shape),
  }


def export_all(
  model,
  variables,
  example_x: np.ndarray,
  calibration: np.ndarray,
  out_dir: Path,
  *,
  parity_x: np.ndarray | None = None,
  ram_bytes: int = micro.DEFAULT_TARGET_RAM_BYTES,
) -> dict[str, Any]:
  """Writes device (float + int8 TFLite, C array) and remote (ONNX) exports; returns sizes.

  The int8 device part is first run under TFLite Micro (`common.micro.check_int8`): nothing is
  written when TFLM lacks one of its ops or its arena does not fit `ram_bytes`.

  Args:
    model, variables: the trained AgileNN.
    example_x: one preprocessed image [1, S, S, 3].
    calibration: preprocessed images [N, S, S, 3] for int8 calibration.
    out_dir: the run's exports/ directory.
    parity_x: preprocessed images TFLM and LiteRT both run (default: `calibration`).
    ram_bytes: the device's RAM (config.export.target_ram_bytes), the most arena TFLM gets.
  """
  from agile.models import AgileNN

  out_dir = Path(out_dir)
  device, remote = _fns(model, variables)
  _, symbols = device(example_x)
  q_example = np.asarray(model.apply(variables, symbols, method=AgileNN.dequantize), np.float32)
  device_float = ex.to_tflite(device, example_x, name="agile_device")
  device_int8 = ex.to_tflite(device, example_x, int8=True, representative_data=[c[None] for c in calibration],
                             int8_io=False, name="agile_device")  # fmt: skip
  mcu = micro.check_int8(device_int8, calibration if parity_x is None else parity_x, ram_bytes=ram_bytes,
                         name="agile device part (int8)", ram_key="export.target_ram_bytes")  # fmt: skip
  remote_float = ex.to_tflite(remote, q_example, name="agile_remote")
  remote_onnx = ex.tflite_to_onnx(remote_float)
  ex.write_atomic(out_dir / "agile_device_float.tflite", device_float)
  ex.write_atomic(out_dir / "agile_device_int8.tflite", device_int8)
  c_array = ex.to_c_array(device_int8, "agile_device_int8", out_dir)
  ex.save_onnx(remote_onnx, out_dir / "agile_remote.onnx")
  meta = _meta(model, variables, example_x.shape, q_example.shape)
  write_json(out_dir / "agile_meta.json", meta)
  act = largest_activation_bytes(device_int8)
  return {
    "device_float_tflite_bytes": len(device_float),
    "device_int8_tflite_bytes": len(device_int8),
    "device_flash_bytes": c_array["model_bytes"],
    **{f"device_int8_{k}": v for k, v in act.items()},
    **mcu.as_dict("device_micro_"),
    "remote_onnx_bytes": len(remote_onnx.SerializeToString()),
    "device_float": device_float,
    "device_int8": device_int8,
    "remote_onnx": remote_onnx,
    "meta": meta,
  }


def split_inference(
  device_tflite: bytes, remote_onnx, meta: dict, x_NSS3: np.ndarray
) -> dict[str, np.ndarray]:
  """Runs the exported device TFLite, dequantises on the 'server', runs the remote ONNX, combines.

  Returns {"local", "remote", "combined", "symbols"} as numpy arrays.
  """
  outs = ex.run_tflite(device_tflite, x_NSS3)
  local, symbols = _pick_outputs(outs)
  centroids = np.asarray(meta["centroids"], np.float32)
  q = centroids[symbols.astype(np.int64)]
  remote = ex.run_onnx(remote_onnx, q)[0]
  w = np.asarray(meta["combination_weights"], np.float32)
  return {"local": local, "remote": remote, "combined": w[0] * local + w[1] * remote, "symbols": symbols}


def _pick_outputs(outs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
  """Finds (local logits, symbols) among the flatbuffer's outputs by rank (2 vs 4)."""
  local = next(o for o in outs if o.ndim == 2)
  symbols = next(o for o in outs if o.ndim == 4)
  return local.astype(np.float32), np.rint(symbols).astype(np.int32)
