"""The deploy step on real links: `python -m launch.bench deploy --links`.

coinfer's deploy step (`edgeinfer coinfer deploy`) on the shared cellular uplink traces
(`../shared/traces/*.up`, Mahimahi format) and the synthetic Markov trace, over the pacer and
the kernel's `tc` link, with each controller asked for; every row is the measured deadline-miss
rate and accuracy beside the simulator's prediction of the same stream, and the gaps.

Each trace is scaled to a mean of `--link-mean-mbps` (0.2 Mbit/s by default): the quick digits
payloads (0.1-2.4 kB per frame at 10 fps, 8-190 kbit/s) then make the link the bottleneck the
controller has to manage, while the device and the server have the CPU to spare (a frame's
device part and server model take about a millisecond each).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

FIGURES = ("deadline_miss_rate", "accuracy", "timely_accuracy", "mean_queue_s")  # each row's, with gaps
SHARED_TRACES = Path(__file__).resolve().parents[3] / "shared" / "traces"


def add_args(parser) -> None:
  parser.add_argument("--links", action="store_true", help="coinfer on every shared trace over pacer and tc")
  parser.add_argument("--link-kinds", default="pacer,tc")
  parser.add_argument("--link-controllers", default="mpc", help="comma-separated: mpc, rate, buffer")
  parser.add_argument("--link-mean-mbps", type=float, default=0.2, help="every trace scaled to this mean")
  parser.add_argument("--link-repeats", type=int, default=2, help="runs of each row (each figure twice)")
  parser.add_argument(
    "--link-repredict",
    action="store_true",
    help="predict the runs recorded under runs/bench/deploy_run/links again, run nothing",
  )
  parser.add_argument(
    "--link-replay",
    action="store_true",
    help="replay the recorded tc runs' requests through the simulator's tc link frame by frame, run nothing",
  )
  parser.add_argument(
    "--link-capture",
    action="store_true",
    help="capture every tc run's packets and TCP_INFO (deploy.capture) and hold the throughput the "
    "device could know against the trace's (common.serving.capture.rate_estimates)",
  )
  parser.add_argument(
    "--link-variant",
    default="",
    help="with --link-replay or --link-repredict: comma-separated variants of the tc link's model "
    "(common.linkmodel.VARIANTS)",
  )


def traces_to_run() -> list[str]:
  """The synthetic Markov trace and every shared cellular trace (when the folder is there)."""
  found = sorted(str(p) for p in SHARED_TRACES.glob("*.up")) if SHARED_TRACES.is_dir() else []
  return ["markov", *found]


def one_row(workdir: Path, base: dict, out: Path) -> dict:
  """One deploy step with `base` settings: the measured and predicted figures and their gaps."""
  from common.serving import runner

  runner.deploy(runner.deployment("coinfer"), {**base, "out": str(out)}, workdir)
  summary = json.loads((out / "summary.json").read_text())
  return gaps(base, summary["measured"], summary["simulator"])


def gaps(settings: dict, m: dict, s: dict) -> dict:
  """A row: measured and predicted figures and their gaps (the accuracy over the answered frames:
  the device's, and the simulator's over the frames it answers in time)."""
  row = {k: settings[k] for k in ("trace", "link", "controller", "trace_scale")}
  s = {**s, "accuracy": s.get("answered_accuracy", s["accuracy"])}
  for key in FIGURES:
    row[key], row[f"sim_{key}"] = m[key], s[key]
    row[f"{key}_gap"] = m[key] - s[key]
  # the simulator's range over its answer-time draws (coinfer.deploy.PREDICT_DRAWS)
  row["sim_deadline_miss_rate_range"] = s["spread"]["deadline_miss_rate"]
  return row


def variants(names: str) -> dict:
  """TbfLink keywords of the comma-separated variant names (a bad name: a one-line error)."""
  from common import linkmodel
  from common.errors import ConfigError

  chosen = [n for n in names.split(",") if n]
  bad = sorted(set(chosen) - set(linkmodel.VARIANTS))
  if bad:
    raise ConfigError(f"--link-variant: unknown {bad}; choose from {sorted(linkmodel.VARIANTS)}")
  return {n: linkmodel.VARIANTS[n] for n in chosen}


def replay_run(d: Path, variant: dict | None = None) -> dict:
  """A recorded tc run's requests (their setups and hand-over times) through the simulator's tc link
  (`coinfer.deploy.link_model`, `common.linkmodel.replay`): per-frame latency error and agreement
  on the deadline, and the miss rates measured and replayed."""
  from coinfer import deploy
  from common import linkmodel, safeio
  from common.serving import runner

  spec = safeio.load_json(d / "device_spec.json", what="device spec", keys=("settings",))
  rec = safeio.load_json(d / "device.json", what="device record", keys=("frames", "wire", "profile"))
  f, p, dl = rec["frames"], rec["profile"], rec["stream"]["deadline_s"]
  link = deploy.link_model(
    rec["wire"],
    runner.load_trace(spec["settings"]),
    rec["rtt_s"],
    rec["stream"]["fps"],
    dl,
    **(variant or {}),
  )
  ready = np.sum([f[k] for k in ("arrival_s", "wait_s", "control_s", "device_s")], axis=0)
  lat = linkmodel.replay(link, ready, f["setup"], p["bits"], p["t_srv"]) - np.asarray(f["arrival_s"])
  meas = np.asarray(f["latency_s"], float)
  err = np.abs(meas - lat)[np.isfinite(meas)] * 1e3
  row = {"run": d.name, "frames": len(lat), "agree": float(np.mean((meas <= dl) == (lat <= dl))),
         "miss": float(np.mean(meas > dl)), "replayed_miss": float(np.mean(lat > dl)),
         "err_p50_ms": float(np.median(err)), "err_p90_ms": float(np.percentile(err, 90))}  # fmt: skip
  print(" ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)
  return row


def repredict(out: Path, variant: dict | None = None) -> list[dict]:
  """The rows of the runs recorded under `out` (each folder's device.json and device_spec.json),
  predicted again by the simulator as it is now, its tc link with `variant` (the measured figures
  are the recorded ones)."""
  from common import safeio
  from common.errors import ServingError
  from common.serving import runner

  dep, rows = runner.deployment("coinfer"), []
  for d in sorted(p.parent for p in out.glob("*/device.json")):
    spec = safeio.load_json(d / "device_spec.json", what="device spec", keys=("settings", "workdir"))
    record = safeio.load_json(d / "device.json", what="device record", keys=("summary",))
    missing = [k for k in FIGURES if k not in record["summary"]]
    if missing:
      raise ServingError(f"{d / 'device.json'}: recorded before the figures {missing}; run --links again")
    trace = runner.load_trace(spec["settings"])
    pred = dep.predict(
      Path(spec["workdir"]), spec["settings"], {**record, "link_variant": variant or {}}, trace
    )
    row = gaps(spec["settings"], record["summary"], pred["summary"])
    rows.append({**row, "trace": Path(row["trace"]).stem, "repeat": d.name.rsplit("_", 1)[-1],
                 "load1": float("nan")})  # fmt: skip
    print(table_line(rows[-1]), flush=True)
  return rows


def run(args) -> dict:
  from common import safeio, traces
  from common.serving import runner

  if args.link_replay:
    variant = variants(args.link_variant)
    runs = sorted(p.parent for p in (Path(args.run_dir) / "links").glob("*_tc_*/device.json"))
    return {"variant": variant, "replays": [replay_run(d, variant) for d in runs]}
  if args.link_repredict:
    rows = repredict(Path(args.run_dir) / "links", variants(args.link_variant))
    return {"rows": rows, "worst_gap": worst_gaps(rows)}
  workdir = Path(args.workdir)
  config = safeio.load_json(workdir / "config.json", what="run config")
  base = {**runner.config_section(controller="mpc").to_dict(), **config.get("deploy", {})}
  base.update(frames=args.frames, fps=args.fps)
  rows = []
  for spec in traces_to_run():
    mean = traces.load(spec, seconds=max(30.0, args.frames / args.fps + 5.0)).mean_bps()
    for kind in args.link_kinds.split(","):
      for ctl in args.link_controllers.split(","):
        for rep in range(args.link_repeats):
          b = {
            **base,
            "trace": spec,
            "link": kind,
            "controller": ctl,
            "trace_scale": args.link_mean_mbps * 1e6 / mean,
          }
          out = Path(args.run_dir) / "links" / f"{Path(spec).stem}_{kind}_{ctl}_{rep}"
          load, captured = os.getloadavg()[0], args.link_capture and kind == "tc"
          row = one_row(workdir, {**b, "capture": captured}, out)
          rows.append({**row, "trace": Path(spec).stem, "repeat": rep, "load1": load})
          print(table_line(rows[-1]), flush=True)
          if captured:
            rows[-1]["estimates"] = estimates(out, rows[-1])
  return {"mean_mbps": args.link_mean_mbps, "frames": args.frames, "fps": args.fps, "rows": rows,
          "worst_gap": worst_gaps(rows)}  # fmt: skip


def estimates(out: Path, row: dict) -> dict:
  """A captured run's throughput estimates against its trace, printed a setup a line."""
  from common.serving import capture

  est = capture.rate_estimates(out)
  for name, e in est.items():
    print(f"  estimates {row['trace']} run {row['repeat']} {name}: {e['frames']} frames, answer "
          f"{e['answer_ratio_median']:.1f}x the trace ({e['answer_within_2x']:.2f} within 2x), kernel's "
          f"delivery rate {e['kernel_ratio_median']:.1f}x ({e['kernel_within_2x']:.2f})", flush=True)  # fmt: skip
  return est


def table_line(r: dict) -> str:
  lo, hi = r["sim_deadline_miss_rate_range"]
  return (
    f"| {r['trace']} | {r['link']} | {r['controller']} | {r['deadline_miss_rate']:.3f} | "
    f"{r['sim_deadline_miss_rate']:.3f} ({lo:.3f}-{hi:.3f}) | {r['deadline_miss_rate_gap']:+.3f} | {r['accuracy']:.3f} | "
    f"{r['sim_accuracy']:.3f} | {r['accuracy_gap']:+.3f} | {r['mean_queue_s'] * 1e3:.1f} | "
    f"{r['sim_mean_queue_s'] * 1e3:.1f} | {r['load1']:.1f} |"
  )


def worst_gaps(rows: list[dict]) -> dict:
  """The largest |gap| of each figure per link kind."""
  out = {}
  for kind in sorted({r["link"] for r in rows}):
    sel = [r for r in rows if r["link"] == kind]
    out[kind] = {
      k: float(np.max(np.abs([r[f"{k}_gap"] for r in sel]))) for k in ("deadline_miss_rate", "accuracy")
    }
  return out
