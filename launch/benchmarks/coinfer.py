"""coinfer benchmark: MPC decision time (H=5, 50 setups) against the plain MILP, and the
controllers on synthetic traces (deadline misses and accuracy against rate-based and the oracle).

  python -m launch.bench coinfer [--states 200 --reference-states 40 --frames 600]

Setup accuracies are the published top-1 errors of the individually trained models
(rtcoinfer-individual-errors.txt; the 16-bit setups, never trained there, take their
8-bit value), or a run's SW-CNN accuracies with --workdir.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

# top-1 error of the individual models, [c][bits 8, 4, 2, 1] (digest table 6.2)
_ERR = {
  1: (0.1574, 0.1583, 0.1761, 0.2108), 2: (0.1428, 0.1472, 0.1474, 0.1894), 3: (0.1426, 0.1451, 0.1501, 0.1818),
  4: (0.1434, 0.1415, 0.1476, 0.1711), 5: (0.1435, 0.1423, 0.1464, 0.1613), 6: (0.1448, 0.1415, 0.1492, 0.1586),
  7: (0.1430, 0.1443, 0.1425, 0.1588), 8: (0.1445, 0.1429, 0.1470, 0.1635), 16: (0.1412, 0.1410, 0.1439, 0.1551),
  32: (0.1387, 0.1384, 0.1440, 0.1486),
}  # fmt: skip


def add_args(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--states", type=int, default=200, help="decisions timed per fast method")
  parser.add_argument("--reference-states", type=int, default=40, help="decisions timed for the plain MILP")
  parser.add_argument("--frames", type=int, default=600, help="frames per trace simulation")
  parser.add_argument("--seeds", type=int, default=3, help="seeds per synthetic trace kind")
  parser.add_argument("--horizon", type=int, default=5)
  parser.add_argument("--workdir", default=None, help="use this run's SW-CNN accuracies")
  parser.add_argument(
    "--step_repeats", type=int, default=3, help="multi-setup training step timings (0: skip)"
  )


def _profile(workdir):
  from coinfer import compress
  from coinfer import controller as C

  setups = compress.make_setups()
  if workdir:
    acc = np.load(Path(workdir) / "distill_I-D-C_correct.npy").mean(axis=1)
    if len(acc) != len(setups):
      raise SystemExit(f"{workdir} has {len(acc)} setups, the benchmark needs the 50 of the default grid")
  else:
    col = {8: 0, 4: 1, 2: 2, 1: 3, 16: 0}
    acc = np.asarray([1.0 - _ERR[s.channels][col[s.bits]] for s in setups])
  return C.make_profile(setups, acc)


def _timed(ctl, states):
  """Decision times over `states` (from a fresh controller state), the picks and each solve's value."""
  times, picks, values = [], [], []
  state = ctl.init()
  for s in states:
    t0 = time.perf_counter()
    pick, state = ctl.update(s, state)
    times.append(time.perf_counter() - t0)
    picks.append(pick)
    values.append(state.value)
  t = np.asarray(times) * 1e3
  timing = {
    "median_ms": float(np.median(t)),
    "p99_ms": float(np.percentile(t, 99)),
    "mean_ms": float(t.mean()),
  }
  return timing, picks, values


def train_step_speed(repeats: int) -> dict:
  """The SW-CNN's multi-setup distillation step (small config, digits, 4 setups per step), timed
  before (grouped depthwise convs, XLA's default options) and after (shifted, the launchers' options)."""
  import dataclasses

  import jax

  from coinfer import models as models_lib
  from coinfer import train as T
  from coinfer.configs import small
  from launch.benchmarks import steps

  config = small.get_config()
  base = T.build(config)
  bs = config.train.batch_size
  batch = {"image": base.train_ds.images[:bs], "label": base.train_ds.labels[:bs].astype("int32")}
  ids = jax.numpy.asarray([base.largest, base.smallest, 3, 7], jax.numpy.int32)

  def make(shifted: bool):
    model = models_lib.SplitNet(dataclasses.replace(base.model.config, shifted_depthwise=shifted))
    ctx = dataclasses.replace(base, model=model)
    tx = T.make_tx(config, 1000, 0.05)
    state = T.init_state(ctx, tx, jax.random.key(0))
    teacher = {
      "params": state.params,
      "batch_stats": models_lib.select_stats(state.batch_stats, base.teacher_id),
    }
    teacher = jax.tree.map(jax.numpy.array, teacher)
    step = T.make_train_step(ctx, tx, lambda rng: ids, teacher=teacher)
    return step, (state, batch, jax.random.key(1))

  return {"batch": bs, "setups_per_step": int(ids.shape[0]), **steps.before_after(make, repeats)}


def _solver_timings(prof, horizon: int, n_states: int, n_reference: int) -> dict:
  """Each MPC solver's decision time on states a DP-MPC meets on a Markov trace, and its first
  choices and objectives against the plain MILP's."""
  from coinfer import compress, simulate
  from coinfer import controller as C
  from common import traces

  states = []
  dp = C.make_mpc(prof, horizon, method="dp")

  def recording(s, state):
    states.append(s)
    return dp.update(s, state)

  simulate.run(C.Controller(dp.init, recording), traces.markov(7, 120.0), profile=prof, frames=n_states)
  ref_states = states[:: max(1, len(states) // n_reference)][:n_reference]
  out = {"setups": len(prof.bits), "horizon": horizon}
  plain = C.make_mpc(prof, horizon, method="milp", reduce=False)
  out["plain_milp_50"], ref_picks, ref_values = _timed(plain, ref_states)
  methods = {
    "pareto_milp": C.make_mpc(prof, horizon, method="milp"),
    "pareto_relax_round": C.make_mpc(prof, horizon, method="relax"),
    "pareto_dp": C.make_mpc(prof, horizon, method="dp"),
    "full_dp": C.make_mpc(prof, horizon, method="dp", reduce=False),
  }
  for name, ctl in methods.items():
    timing, _, _ = _timed(ctl, states)
    _, picks, values = _timed(ctl, ref_states)
    pairs = list(zip(picks, ref_picks, strict=True))
    vals = list(zip(values, ref_values, strict=True))
    gaps = [abs(v - r) for v, r in vals if v is not None and r is not None]
    timing.update(
      candidates=ctl.init().candidates,
      first_choice_equal_to_plain_milp=float(np.mean([a == b for a, b in pairs])),
      mean_first_choice_accuracy_below_plain_milp=float(
        np.mean([prof.accuracy[b] - prof.accuracy[a] for a, b in pairs])
      ),
      max_objective_gap_to_plain_milp=float(max(gaps)) if gaps else None,
      both_infeasible_or_both_solved=float(np.mean([(v is None) == (r is None) for v, r in vals])),
      speedup_vs_plain_milp=out["plain_milp_50"]["median_ms"] / timing["median_ms"],
    )
    out[name] = timing
  out["pareto_setups"] = [
    prof.names[i] for i in compress.pareto_front(prof.bits, prof.accuracy, prof.t_dev + prof.t_srv)
  ]
  return out


KEYS = (
  "accuracy",
  "expected_accuracy",
  "timely_accuracy",
  "deadline_miss_rate",
  "mean_latency_s",
  "p95_latency_s",
)


def _controllers_on_traces(prof, horizon: int, seeds: int, frames: int) -> dict:
  """Every controller on every synthetic trace kind and seed: {trace: {controller: summary}}."""
  from coinfer import controller as C
  from coinfer import simulate
  from common import traces

  per = {}
  for kind in ("markov", "random_walk", "step"):
    for seed in range(seeds):
      tr = traces.synthetic(kind, seed, 120.0)
      ctls = {
        "mpc": C.make_mpc(prof, horizon, method="dp"),
        "mpc_start_1mbps": C.make_mpc(prof, horizon, method="dp", start=1e6),  # the start before Dec 2026
        "rate": C.make_rate_based(prof),
        "buffer": C.make_buffer_based(prof),
        "fixed": C.make_fixed(int(np.argsort(prof.bits)[len(prof.bits) // 2])),
        "oracle": C.make_oracle(prof, tr),
      }
      per[tr.name] = {
        n: simulate.run(c, tr, profile=prof, frames=frames, seed=seed)["summary"] for n, c in ctls.items()
      }
  return per


def _compare(per: dict) -> dict:
  mean = {
    n: {k: float(np.mean([p[n][k] for p in per.values()])) for k in KEYS} for n in next(iter(per.values()))
  }
  out = {"traces_mean": mean}
  names = {
    "miss_rate": "deadline_miss_rate",
    "expected_accuracy": "expected_accuracy",
    "timely_accuracy": "timely_accuracy",
  }
  out["mpc_vs_rate"] = {f"{n}_{c}": mean[c][k] for n, k in names.items() for c in ("mpc", "rate")}
  out["mpc_vs_rate"].update(
    traces_mpc_fewer_misses=int(
      sum(p["mpc"]["deadline_miss_rate"] < p["rate"]["deadline_miss_rate"] for p in per.values())
    ),
    traces=len(per),
  )
  out["mpc_margin_to_oracle"] = {
    k: mean["oracle"][k] - mean["mpc"][k]
    for k in ("timely_accuracy", "expected_accuracy", "deadline_miss_rate")
  }
  return out


def run(args) -> dict:
  prof = _profile(args.workdir)
  out = _solver_timings(prof, args.horizon, args.states, args.reference_states)
  per = _controllers_on_traces(prof, args.horizon, args.seeds, args.frames)
  out.update(_compare(per))
  out["per_trace"] = per
  out["targets"] = {
    "decision_median_under_5ms": out["pareto_dp"]["median_ms"] < 5.0,
    "decision_p99_under_20ms": out["pareto_dp"]["p99_ms"] < 20.0,
  }
  if args.step_repeats:
    out["train_step"] = train_step_speed(args.step_repeats)
  return out
