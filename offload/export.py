"""What the device runs: the DQN (features -> Q for every token state and action) as TFLite / ONNX,
and the MDP / baseline thresholds as a plain lookup table.

The device keeps its token count n itself and offloads iff n >= p and
Q(n, send) >= Q(n, keep) (DQN) or metric >= threshold[n] (MDP).
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np

from common import export as cexport
from common import micro
from offload.models import QNetwork, send_table


def export_dqn(
  net: QNetwork,
  params,
  features: np.ndarray,
  p: int,
  out_dir: str | Path,
  *,
  int8: bool = False,
  onnx: bool = True,
  ram_bytes: int = micro.DEFAULT_TARGET_RAM_BYTES,
) -> dict:
  """Exports the DQN; checks Q values and send decisions of TFLite (and ONNX) against JAX.

  Args:
    net, params: the trained network.
    features: real inputs [N, D] (parity set; the first also fixes the input shape [1, D]).
    p: units per offload of the setting (for the decision agreement).
    out_dir: where dqn_float.tflite, dqn.onnx (and dqn_int8.tflite, micro/ C array) go.
    int8: also a full-int8 model (float32 I/O) for microcontrollers, run under TFLite Micro on
      `features` first (`common.micro.check_int8`): refused, with nothing of it written, when
      TFLM lacks one of its ops or its arena does not fit `ram_bytes`.
    ram_bytes: the device's RAM (config.export.target_ram_bytes).

  Returns:
    {"tflite_bytes", "tflite_max_abs_err", "tflite_decision_agreement", ...}.
  """
  out_dir = Path(out_dir)
  fn = jax.jit(lambda x: net.apply({"params": params}, x)[0])
  x = np.asarray(features, np.float32)
  tfl = cexport.to_tflite(fn, x[:1], name="offload_dqn")
  cexport.write_atomic(out_dir / "dqn_float.tflite", tfl)
  ref = np.asarray(fn(x))
  run = cexport.make_tflite_runner(tfl)
  lite = np.concatenate([run(x[i : i + 1])[0] for i in range(len(x))])

  def agree(qv):
    return float(np.mean(np.asarray(send_table(qv, p)) == np.asarray(send_table(ref, p))))

  res = {
    "tflite_bytes": len(tfl),
    "tflite_max_abs_err": float(np.abs(lite - ref).max()),
    "tflite_decision_agreement": agree(lite),
  }
  if onnx:
    model = cexport.tflite_to_onnx(tfl)
    cexport.save_onnx(model, out_dir / "dqn.onnx")
    on = np.concatenate([cexport.run_onnx(model, x[i : i + 1])[0] for i in range(len(x))])
    res.update(onnx_max_abs_err=float(np.abs(on - ref).max()), onnx_decision_agreement=agree(on))
  if int8:
    rep = [x[i : i + 1] for i in range(min(256, len(x)))]
    t8 = cexport.to_tflite(fn, x[:1], int8=True, representative_data=rep, int8_io=False)
    mcu = micro.check_int8(
      t8, x, ram_bytes=ram_bytes, name="offload DQN (int8)", ram_key="config.export.target_ram_bytes"
    )
    cexport.write_atomic(out_dir / "dqn_int8.tflite", t8)
    cexport.to_c_array(t8, "offload_dqn", out_dir / "micro")
    run8 = cexport.make_tflite_runner(t8)
    q8 = np.concatenate([run8(x[i : i + 1])[0] for i in range(len(x))])
    res.update(int8_bytes=len(t8), int8_decision_agreement=agree(q8), **mcu.as_dict("int8_micro_"))
  return res


def export_thresholds(
  thresholds: np.ndarray, qpm, path: str | Path, *, mean: float = 0.0, std: float = 1.0
) -> Path:
  """Writes a threshold policy as JSON: thresholds per token state in raw metric units."""
  th = np.asarray(thresholds, np.float64) * std + mean
  obj = {
    "q": int(qpm[0]),
    "p": int(qpm[1]),
    "m": int(qpm[2]),
    "rule": "offload iff n >= p and metric >= threshold[n]; then n = min(m, n - p*sent + q*interval)",
    "threshold": [None if not np.isfinite(v) else float(v) for v in th],
  }
  return cexport.write_atomic(path, json.dumps(obj, indent=1).encode())
