"""report.md and loss_vs_rate.png from what the `simulate` step wrote (results.json); computes nothing."""

from __future__ import annotations

from pathlib import Path

import ml_collections

from common import micro, report, safeio
from offload import multicam_report

POLICIES = ("weak", "strong", "lower_bound", "baseline", "mdp", "dqn")
ARRAY_KEYS = ("loss", "offload_fraction", "occupancy")  # per policy in result.npz
POLICY_LABELS = {
  "weak": "weak only",
  "strong": "strong only",
  "lower_bound": "lower bound (no bucket)",
  "baseline": "baseline (one threshold)",
  "mdp": "MDP",
  "dqn": "DQN",
}


def describe(c: ml_collections.ConfigDict, res: dict) -> str:
  """The data, streams and DQN of the run, in one paragraph."""
  m, s, d = c.metrics, c.stream, c.dqn
  src = {
    "digits": "weak/strong CNN pair trained on digits",
    "npz": f"metrics file `{m.file}`",
    "synthetic": "synthetic metrics with the published statistics",
  }[m.source]
  order = (
    "i.i.d." if s.order == "iid" else f"location-reset (spread {s.spread}, reset probability {s.reset_prob})"
  )
  arrivals = (
    "periodic"
    if s.arrivals == "periodic"
    else f"Markov-modulated (intervals {s.interval_state0}/{s.interval_state1}, "
    f"leave probabilities {s.leave_prob_state0}/{s.leave_prob_state1})"
  )
  return (
    f"Metrics: {src}; {res['train_images']} training and {res['test_images']} test images. "
    f"Test streams: {s.test_streams} x {s.test_length} images, {order} order, {arrivals} arrivals. "
    f"DQN: {d.num_layers}x{d.hidden_units} MLP on {d.history_metrics + 1} metrics"
    + (f" and {d.history_intervals + 1} intervals" if d.history_intervals >= 0 else "")
    + f", {res['dqn_iterations']} Q-iterations, {d.num_seeds} seed(s) per setting. "
    f"Simulating all policies took {res['simulation_seconds']:.1f} s."
  )


def _exports(rep: report.Report, c: ml_collections.ConfigDict, par: dict, num_states: int) -> None:
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
  d = c.dqn
  in_size = d.history_metrics + 1 + max(d.history_intervals + 1, 0)
  rep.text(
    f"Inputs: {in_size} features; outputs: Q(n, keep) and Q(n, send) for n = 0..{num_states - 1}. "
    "MDP thresholds per token state (raw metric units) in `exports/mdp_r*_b*.json`."
  )
  if "int8_micro_arena_bytes" in par:
    rep.text(
      f"The int8 DQN under TensorFlow Lite Micro's own interpreter, against LiteRT on the "
      f"{par['parity_inputs']} parity inputs; the arena is the smallest that allocates "
      f"({micro.ARENA_STEP}-byte bisection)."
    )
    rep.table(micro.MICRO_COLUMNS, [micro.micro_cells(par, "int8_micro_")])


def write_report(c: ml_collections.ConfigDict, workdir: str | Path, *, title: str = "") -> Path:
  """Writes workdir/report.md and its plots from results.json, multicam.json and robust.json (those there)."""
  workdir = Path(workdir)
  rep = report.Report(title or "Offloading under a token bucket", workdir)
  if (workdir / "results.json").exists():
    _single_camera(rep, c, workdir)
  multicam_report.sections(rep, workdir)
  return rep.write()


def _single_camera(rep: report.Report, c: ml_collections.ConfigDict, workdir: Path) -> None:
  res = safeio.load_json(workdir / "results.json", what="simulation results", keys=("settings", "losses"))
  setts = [(s["tr"], s["tb"]) for s in res["settings"]]
  losses, frac, occ = res["losses"], res["offload_fraction"], res["occupancy"]
  rep.text(describe(c, res))
  header = ["policy"] + [f"r={r}, b={b}" for r, b in setts]
  rep.heading("Average loss per image")
  rep.table(header, [[POLICY_LABELS[p]] + losses[p] for p in POLICIES])
  rep.heading("Offload fraction and bucket occupancy (mean n/m)")
  rep.table(
    header,
    [
      [POLICY_LABELS[p]] + [f"{f:.3f} / {o:.3f}" for f, o in zip(frac[p], occ[p], strict=True)]
      for p in ("baseline", "mdp", "dqn")
    ],
  )
  order = sorted(range(len(setts)), key=lambda i: setts[i])
  rates = [r for r, _ in setts]
  rep.line_plot(
    "loss_vs_rate.png",
    {POLICY_LABELS[p]: ([rates[i] for i in order], [losses[p][i] for i in order]) for p in POLICIES},
    xlabel="token rate r (tokens per slot)",
    ylabel="average loss",
    title="loss against rate, per policy",
  )
  rep.heading("Ordering DQN <= MDP <= baseline")
  rows = []
  for i, (r, b) in enumerate(setts):
    dq, md, ba = losses["dqn"][i], losses["mdp"][i], losses["baseline"][i]
    rows.append([f"r={r}, b={b}", md - dq, ba - md, "yes" if res["ordering"][i] else "no"])
  rep.table(["setting", "MDP - DQN", "baseline - MDP", "ordering holds"], rows)
  rep.text(
    "Arrays: `result.npz` (per policy: loss, offload fraction, occupancy per setting); `results.json`."
  )
  if "export" in res:
    _exports(rep, c, res["export"], max(s["qpm"][2] for s in res["settings"]) + 1)
