"""Export every subnetwork: TFLite float and int8, TFLite Micro C arrays, and a table
of parameters, MACs, model bytes, peak activation bytes, LiteRT latency and, per int8
subnetwork, TFLite Micro's arena against the target's RAM; and the time TFLite Micro
takes to switch between the subnetworks held in one process."""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import jax
import numpy as np

from common import data as data_lib
from common import errors, micro
from common import export as ex
from subnets import bnstats, models, runtime


def _export_int8(fn, tag: str, label: str, example, rep, test_ds, out_dir: Path, ram_bytes: int,
                 latency_repeats: int) -> dict:  # fmt: skip
  """One subnetwork's int8 export: run under TFLM first (refused: `micro_refused`, nothing
  written), then the flatbuffer, its C array and its accuracy and latency."""
  t8 = ex.to_tflite(fn, example, int8=True, representative_data=rep, name=tag)
  try:
    mcu = micro.check_int8(
      t8, test_ds.images[:256], ram_bytes=ram_bytes, name=f"REDS subnetwork {label} (int8)",
      ram_key="export.target_ram_bytes",
    )  # fmt: skip
  except errors.ExportError as e:
    return {"micro_refused": str(e), "micro_ram_bytes": ram_bytes}
  ex.write_atomic(out_dir / f"{tag}_int8.tflite", t8)
  ex.to_c_array(t8, tag, out_dir / "micro")
  q_logits = ex.run_tflite(t8, test_ds.images)[0]
  return {
    **mcu.as_dict("micro_"),
    "int8_file": f"{tag}_int8.tflite",
    "int8_bytes": len(t8),
    "int8_accuracy": float(np.mean(np.argmax(q_logits, -1) == test_ds.labels)),
    "int8_latency_us": ex.litert_latency_us(t8, example, repeats=latency_repeats),
  }


def export_subnets(
  mcfg: models.ModelConfig,
  variables: dict,
  widths_list: Sequence[Sequence[int]],
  labels: Sequence[str],
  train_ds: data_lib.Dataset,
  test_ds: data_lib.Dataset,
  *,
  mean,
  std,
  stats_list: Sequence[dict] | None = None,
  out_dir: Path,
  int8: bool = True,
  representative_examples: int = 128,
  latency_repeats: int = 200,
  name: str = "reds",
  ram_bytes: int = micro.DEFAULT_TARGET_RAM_BYTES,
) -> list[dict]:
  """Writes exports/<name>_<label>_{float,int8}.tflite and micro/<name>_<label>.{h,cc}; returns table rows.

  Each int8 subnetwork first runs under TFLite Micro on the parity images (`common.micro`); one
  that TFLM cannot run (an op it lacks, an arena over `ram_bytes`) is refused: its int8 files are
  not written and its row says why (`micro_refused`), while the other subnetworks go on.

  stats_list: each subnetwork's own BN statistics (`subnets.bnstats`), folded into its export.
  """
  costs = models.chain_costs(mcfg, train_ds.image_shape)
  example = test_ds.images[:1]
  rep = [train_ds.images[i : i + 1] for i in range(min(representative_examples, len(train_ds)))]
  rows = []
  for k, (ws, label) in enumerate(zip(widths_list, labels, strict=True)):
    sub_cfg = mcfg.with_widths(ws)
    v = bnstats.with_stats(variables, mcfg, ws, None if stats_list is None else stats_list[k])
    fn = jax.jit(lambda x, v=v, f=runtime.predict_fn(sub_cfg, mean=mean, std=std): f(v, x))
    tag = f"{name}_{label}".replace("%", "").replace(".", "_")
    row = {
      "subnet": label,
      "widths": list(ws),
      "params": models.param_count(sub_cfg, train_ds.image_shape),
      "macs": costs.macs(ws),
      "peak_act_bytes": costs.peak_act_bytes(ws),
    }
    tfl = ex.to_tflite(fn, example, name=tag)
    ex.write_atomic(out_dir / f"{tag}_float.tflite", tfl)
    par = ex.check_parity(fn, tfl, test_ds.images[:256])
    lite_logits = ex.run_tflite(tfl, test_ds.images)[0]
    row |= {
      "float_bytes": len(tfl),
      "float_max_abs_err": par.tflite_max_abs_err,
      "float_accuracy": float(np.mean(np.argmax(lite_logits, -1) == test_ds.labels)),
      "float_latency_us": ex.litert_latency_us(tfl, example, repeats=latency_repeats),
    }
    if int8:
      row |= _export_int8(fn, tag, label, example, rep, test_ds, out_dir, ram_bytes, latency_repeats)
    rows.append(row)
  return rows


def tflm_switching(flatbuffers: Sequence[bytes], example: np.ndarray, *, repeats: int = 200) -> dict:
  """Times switching between int8 subnetworks under TFLite Micro, all in this one process.

  Two ways a device can hold N subnetworks (every flatbuffer stays in flash either way):
  resident, one interpreter and arena per subnetwork (RAM = the sum of the arenas), where a
  switch only picks another interpreter, so the figure is switch + first inference minus a
  steady inference of the same subnetwork; and one shared arena sized for the largest
  (RAM = the largest arena), where a switch builds the target's interpreter in it again
  (TFLM's C++ parse, kernel init/prepare and memory planning, `micro.native_builder`; here
  also one host `malloc` of the arena).
  """
  arenas = [micro.smallest_arena_bytes(fb, 1024, 64 << 20) for fb in flatbuffers]
  shared = max(arenas)
  resident = [micro.interpreter(fb, a, probed=True) for fb, a in zip(flatbuffers, arenas, strict=True)]
  n = len(flatbuffers)
  for it in resident:
    micro.run_micro(it, 1, example)
  first, steady = [], []
  for r in range(repeats):
    i = r % n
    resident[(i - 1) % n].invoke()  # the previous subnetwork ran last
    t0 = time.perf_counter()
    micro.run_micro(resident[i], 1, example)
    first.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    micro.run_micro(resident[i], 1, example)
    steady.append(time.perf_counter() - t0)
  builders = [micro.native_builder(fb, shared) for fb in flatbuffers]
  reload = []
  for r in range(repeats):
    build = builders[r % n]
    t0 = time.perf_counter()
    build()
    reload.append(time.perf_counter() - t0)
  med = statistics.median
  return {
    "subnetworks": n,
    "arena_bytes": arenas,
    "resident_ram_bytes": sum(arenas),
    "shared_arena_bytes": shared,
    "resident_switch_plus_first_inference_us": med(first) * 1e6,
    "resident_steady_inference_us": med(steady) * 1e6,
    "resident_switch_overhead_us": (med(first) - med(steady)) * 1e6,
    "shared_arena_switch_us": med(reload) * 1e6,
    "repeats": repeats,
  }
