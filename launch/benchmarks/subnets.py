"""REDS targets: `python -m launch.bench subnets [--skip-accuracy] [--l-granularity 4]`.

* knapsack: DS-CNN-S size (5 layers x 64 units, Hello-Edge 49x10 MAC model) solved to
  optimality per budget (< 10 s each); DS-CNN-L size (6 x 276) with its gap (< 60 s each).
  Scores are synthetic heavy-tailed importances (seeded): the solve time depends on the
  instance size and cost structure, not on a trained model.
* switching: median time of `SubnetRuntime.switch(i)` and of switch + first inference
  minus a steady inference, against the paper's 40 us MCU figure; beside it the same
  subnetworks as int8 flatbuffers in one TensorFlow Lite Micro process
  (`subnets.export.tflm_switching`: all resident, or one shared arena rebuilt per switch).
* LiteRT: float latency of the 25 % DS-CNN-S subnetwork / the dense model (target <= 0.5),
  with exact widths (granularity 1) and with widths in multiples of 8 (XNNPACK's SIMD lanes),
  and for the vision DS-CNN-S at 32x32.
* accuracy on digits (quick config, resumed from --workdir): monotone in the budget and
  REDS >= uniform width scaling at every budget.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np

from common.timing import measure


def add_args(parser) -> None:
  parser.add_argument("--l-granularity", type=int, default=4, help="width step of the DS-CNN-L knapsack")
  parser.add_argument("--time-limit", type=float, default=60.0)
  parser.add_argument("--switch-repeats", type=int, default=2000)
  parser.add_argument("--latency-repeats", type=int, default=300)
  parser.add_argument("--skip-accuracy", action="store_true")
  parser.add_argument("--workdir", default="runs/bench/subnets_quick")
  parser.add_argument("--step_repeats", type=int, default=3, help="joint fine-tuning step timings (0: skip)")


def _knapsack(preset: str, granularity: int, time_limit: float, seed: int = 0) -> dict:
  from subnets import knapsack, models

  cfg = models.preset(preset, 12)
  costs = models.chain_costs(cfg, (49, 10, 1))
  rng = np.random.default_rng(seed)
  scores = [np.sort(rng.gamma(0.5, 1.0, u))[::-1] for u in cfg.widths]
  t0 = time.perf_counter()
  sols = knapsack.solve_nested(
    scores, costs.pair, costs.unit, [0.25, 0.5, 0.75], in_width=costs.in_width,
    granularity=granularity, time_limit=time_limit,
  )  # fmt: skip
  return {
    "units": list(cfg.widths),
    "granularity": granularity,
    "widths": [list(s.widths) for s in sols],
    "solve_s": [s.solve_s for s in sols],
    "gap": [s.gap for s in sols],
    "status": [s.status for s in sols],
    "total_s": time.perf_counter() - t0,
  }


def _switching(repeats: int) -> dict:
  import jax

  from subnets import knapsack, models, runtime

  cfg = models.preset("ds_cnn_s", 12)
  shape = (49, 10, 1)
  costs = models.chain_costs(cfg, shape)
  v = models.init_variables(cfg, jax.random.key(0), shape)
  rng = np.random.default_rng(0)
  scores = [np.sort(rng.gamma(0.5, 1.0, u))[::-1] for u in cfg.widths]
  widths = knapsack.nested_widths(scores, costs.pair, costs.unit, [0.25, 0.5, 0.75], in_width=1) + [
    list(cfg.widths)
  ]
  x = rng.normal(size=(1, *shape)).astype(np.float32)
  rt = runtime.SubnetRuntime(cfg, v, widths, x, mean=0.0, std=1.0)
  xs = jax.device_put(x)
  for i in range(len(widths)):
    rt.switch(i)
    jax.block_until_ready(rt(xs))
  idx = [0]

  def switch():
    idx[0] = (idx[0] + 1) % len(widths)
    rt.switch(idx[0])

  sw = measure(switch, repeats=repeats, warmup=50)
  first, steady = [], []
  for r in range(min(repeats, 500)):
    i = r % len(widths)
    t0 = time.perf_counter()
    rt.switch(i)
    jax.block_until_ready(rt(xs))
    first.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    jax.block_until_ready(rt(xs))
    steady.append(time.perf_counter() - t0)
  return {
    "switch_median_us": sw["median_s"] * 1e6,
    "switch_p90_us": sw["p90_s"] * 1e6,
    "switch_plus_first_inference_median_us": statistics.median(first) * 1e6,
    "steady_inference_median_us": statistics.median(steady) * 1e6,
    "switch_overhead_us": (statistics.median(first) - statistics.median(steady)) * 1e6,
    "widths": widths,
    "tflm": _tflm_switching(cfg, v, widths, x, min(repeats, 300)),
  }


def _tflm_switching(cfg, v, widths, x, repeats: int) -> dict:
  import jax

  from common import export as ex
  from subnets import runtime, surgery
  from subnets.export import tflm_switching

  rep = [np.random.default_rng(i).normal(size=x.shape).astype(np.float32) for i in range(32)]
  fbs = []
  for ws in widths:
    sub = surgery.slice_variables(v, cfg, ws)
    f = runtime.predict_fn(cfg.with_widths(ws), mean=0.0, std=1.0)
    fbs.append(
      ex.to_tflite(jax.jit(lambda a, sub=sub, f=f: f(sub, a)), x, int8=True, representative_data=rep)
    )
  return tflm_switching(fbs, x, repeats=repeats)


def _litert(repeats: int, preset: str, shape: tuple[int, int, int], granularity: int = 1) -> dict:
  import jax

  from common import export as ex
  from common.export import litert_latency_us
  from subnets import knapsack, models, runtime, surgery

  cfg = models.preset(preset, 12)
  costs = models.chain_costs(cfg, shape)
  rng = np.random.default_rng(0)
  scores = [np.sort(rng.gamma(0.5, 1.0, u))[::-1] for u in cfg.widths]
  sol = knapsack.solve_nested(
    scores, costs.pair, costs.unit, [0.25], in_width=costs.in_width, granularity=granularity
  )
  widths = [list(sol[0].widths), list(cfg.widths)]
  v = models.init_variables(cfg, jax.random.key(0), shape)
  x = np.random.default_rng(1).normal(size=(1, *shape)).astype(np.float32)
  out = {}
  for name, ws in (("25pct", widths[0]), ("dense", widths[-1])):
    sub = surgery.slice_variables(v, cfg, ws)
    f = runtime.predict_fn(cfg.with_widths(ws), mean=0.0, std=1.0)
    tfl = ex.to_tflite(jax.jit(lambda a, sub=sub, f=f: f(sub, a)), x)
    out[f"{name}_latency_us"] = litert_latency_us(tfl, x, repeats=repeats)
    out[f"{name}_macs"] = costs.macs(ws)
    out[f"{name}_widths"] = list(ws)
  out["latency_ratio_25pct_over_dense"] = out["25pct_latency_us"] / out["dense_latency_us"]
  out["mac_ratio_25pct_over_dense"] = out["25pct_macs"] / out["dense_macs"]
  return out


def _accuracy(workdir: str) -> dict:
  from subnets import pipeline
  from subnets.configs import quick

  ft = pipeline.run_step("finetune", quick.get_config(), Path(workdir), show_progress=False)
  reds = ft["methods"]["reds"]["accuracy"]
  uni = ft["methods"]["uniform"]["accuracy"]
  return {
    "reds_accuracy": reds,
    "uniform_accuracy": uni,
    "others": {m: r["accuracy"] for m, r in ft["methods"].items() if m not in ("reds", "uniform")},
    "monotone_in_budget": all(a <= b for a, b in zip(reds, reds[1:], strict=False)),
    "reds_ge_uniform_each_budget": all(a >= b for a, b in zip(reds, uni, strict=True)),
  }


def train_step_speed(repeats: int) -> dict:
  """The joint fine-tuning step of DS-CNN-S (49x10x1 MFCCs, 12 classes, batch 64) over its 25/50/75/100 %
  subnetworks, timed before (grouped depthwise convs, XLA's default options) and after (shifted, the
  launchers' options)."""
  import dataclasses

  import jax
  import jax.numpy as jnp
  import optax

  from common import train as train_lib
  from launch.benchmarks import steps
  from subnets import losses as subnets_losses
  from subnets import models
  from subnets import train as subnets_train

  base = models.preset("ds_cnn_s", 12)
  widths_list = [[max(1, int(w * f)) for w in base.widths] for f in (0.25, 0.5, 0.75, 1.0)]
  rng = np.random.default_rng(0)
  batch = {"image": rng.normal(size=(64, 49, 10, 1)).astype(np.float32), "label": rng.integers(0, 12, 64)}
  batch["label"] = batch["label"].astype(np.int32)

  def make(shifted: bool):
    mcfg = dataclasses.replace(base, shifted_depthwise=shifted)
    variables = models.init_variables(mcfg, jax.random.key(0), (49, 10, 1))
    tx = optax.adam(1e-3)
    pis = subnets_losses.loss_weights(mcfg, widths_list, (49, 10, 1))
    step, _ = subnets_train.make_joint_steps(mcfg, widths_list, tx, mean=0.0, std=1.0, pis=pis, augment=True)
    state = train_lib.create_train_state(jax.tree.map(jnp.array, variables), tx)
    return step, (state, batch, jax.random.key(1))

  return {
    "model": "ds_cnn_s",
    "subnetworks": len(widths_list),
    "batch": 64,
    **steps.before_after(make, repeats),
  }


def run(args) -> dict:
  s = _knapsack("ds_cnn_s", 1, args.time_limit)
  lk = _knapsack("ds_cnn_l", args.l_granularity, args.time_limit)
  sw = _switching(args.switch_repeats)
  lite = _litert(args.latency_repeats, "ds_cnn_s", (49, 10, 1))
  lite_g8 = _litert(args.latency_repeats, "ds_cnn_s", (49, 10, 1), granularity=8)
  lite_vision = _litert(args.latency_repeats, "ds_cnn_s_vision", (32, 32, 3))
  res = {
    "knapsack_ds_cnn_s": s,
    "knapsack_ds_cnn_l": lk,
    "switching": sw,
    "litert": lite,
    "litert_granularity8": lite_g8,
    "litert_vision_ds_cnn_s_32x32": lite_vision,
    "targets": {
      "ds_cnn_s_each_budget_under_10s_optimal": all(t < 10 for t in s["solve_s"])
      and all(g == 0 for g in s["gap"]),
      "ds_cnn_l_each_budget_under_60s": all(t < 60 for t in lk["solve_s"]),
      "switch_median_under_40us": sw["switch_median_us"] < 40,
      "switch_plus_inference_overhead_under_40us": sw["switch_overhead_us"] < 40,
      "litert_25pct_at_most_half_dense": lite["latency_ratio_25pct_over_dense"] <= 0.5,
      "litert_granularity8_25pct_at_most_half_dense": lite_g8["latency_ratio_25pct_over_dense"] <= 0.5,
      "litert_vision_25pct_at_most_half_dense": lite_vision["latency_ratio_25pct_over_dense"] <= 0.5,
    },
  }
  if args.step_repeats:
    res["train_step"] = train_step_speed(args.step_repeats)
  if not args.skip_accuracy:
    acc = _accuracy(args.workdir)
    res["digits_accuracy"] = acc
    res["targets"]["digits_monotone"] = acc["monotone_in_budget"]
    res["targets"]["digits_reds_ge_uniform"] = acc["reds_ge_uniform_each_budget"]
  return res
