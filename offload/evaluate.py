"""`simulate_and_report(config, workdir)`: every policy on the test streams, arrays, plot and report.md."""

from __future__ import annotations

import io
import time
from pathlib import Path

import jax
import ml_collections
import numpy as np

from common import micro, report
from common.export import write_atomic
from offload import train as otrain


def _export(c, d, setts, net, state, res, seq, iv, workdir: Path, rep: report.Report) -> dict:
  """Exports the first setting's DQN (TFLite float / int8, ONNX) and every setting's MDP thresholds."""
  from offload import dqn as dqn_lib
  from offload import export as oexport

  out = workdir / "exports"
  for (r, b, qpm), th in zip(setts, res["mdp_thresholds"], strict=True):
    oexport.export_thresholds(np.asarray(th), qpm, out / f"mdp_r{r}_b{b}.json", mean=d.mean, std=d.std)
  params = jax.tree.map(lambda x: x[0], state.params)
  n = min(512, seq.shape[1] - 1)
  ms = jax.numpy.asarray(d.test.metrics[seq[:1]])
  x = np.asarray(
    dqn_lib.features(ms, jax.numpy.asarray(iv[:1]), np.zeros(n, np.int32), np.arange(1, n + 1), net.config)
  )
  ram = micro.target_ram_bytes(c, "export_target_ram_bytes")
  par = oexport.export_dqn(net, params, x, setts[0][2].p, out, int8=c.export_int8, ram_bytes=ram)
  rep.heading("Exports")
  rows = [
    ["DQN TFLite float32", par["tflite_bytes"], par["tflite_max_abs_err"], par["tflite_decision_agreement"]]
  ]
  if "onnx_max_abs_err" in par:
    rows.append(["DQN ONNX (from TFLite)", "", par["onnx_max_abs_err"], par["onnx_decision_agreement"]])
  if "int8_bytes" in par:
    rows.append(
      ["DQN TFLite int8 (float I/O) + C array", par["int8_bytes"], "", par["int8_decision_agreement"]]
    )
  rep.table(["format", "bytes", "max abs error of Q vs JAX", "send-decision agreement (all states)"], rows)
  rep.text(
    f"Inputs: {net.config.in_size} features; outputs: Q(n, keep) and Q(n, send) for n = 0..{net.num_states - 1}. "
    "MDP thresholds per token state (raw metric units) in `exports/mdp_r*_b*.json`."
  )
  if "int8_micro_arena_bytes" in par:
    rep.text(
      f"The int8 DQN under TensorFlow Lite Micro's own interpreter, against LiteRT on the {len(x)} "
      f"parity inputs; the arena is the smallest that allocates ({micro.ARENA_STEP}-byte bisection)."
    )
    rep.table(micro.MICRO_COLUMNS, [micro.micro_cells(par, "int8_micro_")])
  return par


POLICY_LABELS = {
  "weak": "weak only",
  "strong": "strong only",
  "lower_bound": "lower bound (no bucket)",
  "baseline": "baseline (one threshold)",
  "mdp": "MDP",
  "dqn": "DQN",
}


def simulate_and_report(
  c: ml_collections.ConfigDict, workdir: str | Path, *, show_progress: bool = True, title: str = ""
) -> dict:
  """Simulates weak/strong/lower bound/baseline/MDP/DQN per (tr, tb) setting; writes the report.

  Returns:
    {"losses": {policy: [per setting]}, ...} (also in workdir/results.json; arrays in result.npz).
  """
  otrain.validate(c)
  workdir = Path(workdir)
  keys = otrain._keys(c)
  d = otrain.load_metrics(c, workdir, show_progress=show_progress)
  setts = otrain.settings(c)
  net, state, rows = otrain.restore_dqn(c, workdir)
  _, _, tint = otrain.make_pool(c, keys["pool"], d.train, c.tnum, c.tlen)
  seq, iv = otrain._streams(c, keys["test"], len(d.test.metrics), c.snum, c.slen)
  t0 = time.time()
  res = otrain.evaluate_policies(c, d, tint, seq, iv, setts, net, state, rows)
  sim_s = time.time() - t0
  rates = [s[0] for s in setts]
  arrays = {
    f"{p}_{k}": np.asarray(res[p][k], np.float64)
    for p in otrain.POLICIES
    for k in ("loss", "offload_fraction", "occupancy")
  }
  arrays.update(
    tr=np.asarray(rates),
    tb=np.asarray([s[1] for s in setts]),
    weak=res["weak_loss"],
    strong=res["strong_loss"],
  )
  buf = io.BytesIO()
  np.savez(buf, **arrays)
  write_atomic(workdir / "result.npz", buf.getvalue())
  summary = {
    "settings": [{"tr": r, "tb": b, "qpm": list(qpm)} for r, b, qpm in setts],
    "losses": {p: res[p]["loss"] for p in otrain.POLICIES},
    "offload_fraction": {p: res[p]["offload_fraction"] for p in otrain.POLICIES},
    "occupancy": {p: res[p]["occupancy"] for p in ("baseline", "mdp", "dqn")},
    "dqn_per_seed_loss": res["dqn"].get("per_seed_loss"),
    "simulation_seconds": sim_s,
    "streams": [c.snum, c.slen],
  }
  report.write_json(workdir / "results.json", summary)
  rep = report.Report(title or "Offloading under a token bucket", workdir)
  src = {
    "digits": "weak/strong CNN pair trained on digits",
    "npz": f"metrics file `{c.metrics_file}`",
    "synthetic": "synthetic metrics with the published statistics",
  }[c.source]
  stype = "i.i.d." if c.stype == 0 else f"location-reset (spread {c.spread}, rprob {c.rprob})"
  itype = (
    "periodic" if c.itype == 0 else f"Markov-modulated (int {c.int1}/{c.int2}, tprob {c.tprob1}/{c.tprob2})"
  )
  rep.text(
    f"Metrics: {src}; {len(d.train.metrics)} training and {len(d.test.metrics)} test images. "
    f"Test streams: {c.snum} x {c.slen} images, {stype} order, {itype} arrivals. "
    f"DQN: {c.nlayers}x{c.nhidden} MLP on {c.nhist1 + 1} metrics"
    + (f" and {c.nhist2 + 1} intervals" if c.nhist2 >= 0 else "")
    + f", {int(np.asarray(state.it)[0])} Q-iterations, {c.num_seeds} seed(s) per setting. "
    f"Simulating all policies took {sim_s:.1f} s."
  )
  rep.heading("Average loss per image")
  header = ["policy"] + [f"r={r}, b={b}" for r, b, _ in setts]
  rep.table(header, [[POLICY_LABELS[p]] + res[p]["loss"] for p in otrain.POLICIES])
  rep.heading("Offload fraction and bucket occupancy (mean n/m)")
  rep.table(
    ["policy"] + [f"r={r}, b={b}" for r, b, _ in setts],
    [
      [POLICY_LABELS[p]]
      + [f"{f:.3f} / {o:.3f}" for f, o in zip(res[p]["offload_fraction"], res[p]["occupancy"], strict=True)]
      for p in ("baseline", "mdp", "dqn")
    ],
  )
  order = sorted(range(len(setts)), key=lambda i: (rates[i], setts[i][1]))
  rep.line_plot(
    "loss_vs_rate.png",
    {
      POLICY_LABELS[p]: ([rates[i] for i in order], [res[p]["loss"][i] for i in order])
      for p in otrain.POLICIES
    },
    xlabel="token rate r (tokens per slot)",
    ylabel="average loss",
    title="loss against rate, per policy",
  )
  rep.heading("Ordering DQN <= MDP <= baseline")
  rows = []
  for i, (r, b, _) in enumerate(setts):
    dq, md, ba = res["dqn"]["loss"][i], res["mdp"]["loss"][i], res["baseline"]["loss"][i]
    rows.append([f"r={r}, b={b}", md - dq, ba - md, "yes" if dq <= md <= ba else "no"])
  rep.table(["setting", "MDP - DQN", "baseline - MDP", "ordering holds"], rows)
  rep.text(
    "Arrays: `result.npz` (per policy: loss, offload fraction, occupancy per setting); `results.json`."
  )
  if c.export:
    summary["export"] = _export(c, d, setts, net, state, res, seq, iv, workdir, rep)
  rep.write()
  summary["ordering"] = [r[-1] == "yes" for r in rows]

  return summary
