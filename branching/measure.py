"""Measurements on this machine: LiteRT latencies for the `host` processor, branch-parallel speedup.

`calibrate_host` exports a few single-branch variants of a config (random
weights, as the artifact measures), times them with LiteRT on 1 and on
`threads` (2 by default) threads and fits the cost model's `host` (1 thread)
and `host2` (`threads` threads) coefficients by the same least squares as the
phone processors.
`parallel_speedup` times the single-branch original on 1 and `threads` threads, the
stretched model as one sequential flatbuffer, and the stretched model with the
branches of each stage on pinned threads (`branching.forkjoin.PinnedRunner`), and puts
the cost model's predictions beside the measurements. The host's fork/join term of those
predictions is fitted to the same runner's per-stage hand-off overheads at the timed size
(`forkjoin.stage_timings`); the 224 px fit
(`costmodel.HOST_FORK_JOIN`, per element) charged small models for hand-offs they do not pay.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from branching import costmodel, forkjoin
from branching import export as bexport
from branching.models import AnyNet
from branching.network import NetConfig, Stage

HOST_ALL = {"cpu": "host", "gpu": "host", "dsp": "host"}
HOST2_ALL = {"cpu": "host2", "gpu": "host2", "dsp": "host2"}
# (width scale, extra depth) of the single-branch variants `calibrate_host` times.
SCALES = ((0.5, 1), (1.5, 1), (1.0, 2), (0.75, 1), (2.0, 1), (1.25, 2), (0.5, 2), (1.5, 2))


def variants(base: NetConfig, n: int) -> list[NetConfig]:
  """n single-branch variants of `base` with scaled widths and depths (deterministic)."""
  out = []
  for k, (ws, dd) in enumerate(SCALES[:n]):
    stages = []
    for st in base.stages:
      b = st.branches[0]
      w = max(8, int(round(b.width * ws / 8)) * 8)
      w_b = int(round(w * b.bot_mul))
      gw = w_b if base.block_type != "mbconv" else b.group_w
      nb = dataclasses.replace(b, width=w, depth=max(1, b.depth + dd - 1), group_w=gw)
      stages.append(Stage((nb,), w, st.kernel))
    out.append(base.replace(name=f"{base.name}-v{k}", stages=tuple(stages), mb_ver=2))
  return out


def random_variables(net: NetConfig, image_size: int, seed: int = 0):
  model = AnyNet(net)
  return model, model.init(jax.random.key(seed), jnp.zeros((1, image_size, image_size, 3)), train=False)


def time_whole(tfl: bytes, image_size: int, threads: int, repeats: int) -> float:
  x = np.random.default_rng(0).random((1, image_size, image_size, 3), np.float32)
  return bexport.time_fn(bexport.tflite_runner(tfl, threads), x, repeats=repeats)


def calibrate_host(
  base: NetConfig, image_size: int, *, n_models: int = 4, repeats: int = 30, threads: int = 2
) -> tuple[costmodel.CostTable, list[dict]]:
  """Fits `host` and `host2` to LiteRT latencies of `n_models` variants of `base` (random weights)."""
  one = np.zeros(3, np.float32)
  samples = []
  for net in variants(base, n_models):
    model, v = random_variables(net, image_size)
    tfl = bexport.export_model(model, v, image_size, mean=one * 0, std=one + 1)
    samples.append(
      {
        "config": net,
        "ms_1": time_whole(tfl, image_size, 1, repeats),
        "ms_n": time_whole(tfl, image_size, threads, repeats),
      }
    )
  coef = {}
  for key, dev in (("ms_1", "host"), ("ms_n", "host2")):
    data = [(s["config"], s[key]) for s in samples]
    prior_ms = [
      costmodel.predict(c, costmodel.CostTable({"cpu": tuple(costmodel.PRIOR)}), image_size=image_size)
      for c, _ in data
    ]
    scale = float(np.median([ms / p for (_, ms), p in zip(data, prior_ms, strict=True)]))
    t = costmodel.calibrate(data, ("cpu",), image_size=image_size, prior=costmodel.PRIOR * scale)
    coef[dev] = t.coef["cpu"]
  # Single-branch variants carry no fork/join: the host's term comes from the branch-parallel measurement.
  v = list(coef["host"])
  v[costmodel.FEATURES.index("n_xfer")], v[costmodel.FEATURES.index("xfer_elems")] = costmodel.HOST_FORK_JOIN
  coef["host"] = tuple(v)
  rows = [
    {"config": s["config"].name, "ms_1thread": s["ms_1"], f"ms_{threads}threads": s["ms_n"]} for s in samples
  ]
  return costmodel.CostTable(coef), rows


def _time_pinned(runner: forkjoin.PinnedRunner, x: np.ndarray, repeats: int) -> float:
  with runner.pinned():
    return bexport.time_fn(runner.run, x, repeats=repeats)


def _predicted(original, stretched, host_table, image_size: int, threads: int, s, e) -> dict:
  """The cost model's latencies of the same pair on this host, the fork/join hand-off (`s`, `e`)
  measured at this size in place of the table's."""
  fixed = costmodel.predict(stretched, host_table, image_size=image_size, device_map=HOST_ALL)
  host_table = forkjoin.with_fork_join(host_table, "host", s, e)
  p_o1 = costmodel.predict(original, host_table, image_size=image_size, device_map=HOST_ALL)
  p_o2 = costmodel.predict(original, host_table, image_size=image_size, device_map=HOST2_ALL)
  p_s = costmodel.predict(stretched, host_table, image_size=image_size, device_map=HOST_ALL)
  return {
    "predicted_branch_parallel_ms_with_224px_fork_join": fixed,
    "predicted_original_1thread_ms": p_o1,
    f"predicted_original_{threads}threads_ms": p_o2,
    "predicted_branch_parallel_ms": p_s,
    f"predicted_speedup_vs_original_{threads}threads": p_o2 / p_s,
  }


def parallel_speedup(
  original: tuple[AnyNet, dict],
  stretched: tuple[AnyNet, dict],
  image_size: int,
  *,
  mean,
  std,
  threads: int = 2,
  repeats: int = 50,
  host_table: costmodel.CostTable | None = None,
  original_tflite: bytes | None = None,
  stretched_tflite: bytes | None = None,
  stretched_segments: list | None = None,
) -> dict:
  """Measured (LiteRT, this CPU) and predicted latencies of original vs stretched, in ms.

  `original_tflite` / `stretched_tflite` / `stretched_segments` reuse flatbuffers already exported for
  these variables. Keys name the thread count they were timed with (`..._{threads}threads`).
  """
  (m_o, v_o), (m_s, v_s) = original, stretched
  x = np.random.default_rng(0).random((1, image_size, image_size, 3), np.float32)
  tfl_o = original_tflite or bexport.export_model(m_o, v_o, image_size, mean=mean, std=std)
  tfl_s = stretched_tflite or bexport.export_model(m_s, v_s, image_size, mean=mean, std=std)
  segs = stretched_segments or bexport.export_segments(m_s, v_s, image_size, mean=mean, std=std)
  par = forkjoin.PinnedRunner(segs, forkjoin.default_cores(threads))
  seq = bexport.ParallelRunner(segs, threads=1, parallel=False)
  ref = np.asarray(m_s.apply(v_s, (x - mean) / std, train=False)[0])
  out = {
    "original_1thread_ms": bexport.time_fn(bexport.tflite_runner(tfl_o, 1), x, repeats=repeats),
    f"original_{threads}threads_ms": bexport.time_fn(
      bexport.tflite_runner(tfl_o, threads), x, repeats=repeats
    ),
    "stretched_1thread_ms": bexport.time_fn(bexport.tflite_runner(tfl_s, 1), x, repeats=repeats),
    "stretched_segments_sequential_ms": bexport.time_fn(seq, x, repeats=repeats),
    f"stretched_branch_parallel_{threads}threads_ms": _time_pinned(par, x, repeats),
    "branch_parallel_max_abs_err": float(np.abs(par(x) - ref).max()),
    "tags": {k: len(v) for k, v in bexport.tags(tfl_s).items()},
  }
  stages = forkjoin.stage_timings(par, x, repeats=repeats)
  par.close()
  s, e = forkjoin.fit_fork_join(stages)
  out["fork_join"] = {"per_stage_s_ms": s, "per_element_e_ms": e, "stages": stages}
  out[f"measured_speedup_vs_original_{threads}threads"] = (
    out[f"original_{threads}threads_ms"] / out[f"stretched_branch_parallel_{threads}threads_ms"]
  )
  out["measured_speedup_vs_original_1thread"] = (
    out["original_1thread_ms"] / out[f"stretched_branch_parallel_{threads}threads_ms"]
  )
  if host_table is not None:
    out.update(_predicted(m_o.config, m_s.config, host_table, image_size, threads, s, e))
  return out
