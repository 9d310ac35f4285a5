"""The report of a fleet deploy (`config.deploy.cameras` > 1): each strategy's loss through the
runtime beside the multi-camera simulator's on the same streams, the server rule's spread over
arrival orders, and every camera's frames (ok, late, lost, refused; a camera whose process died
has all its frames counted lost)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from offload import fleet

TOLERANCE = 0.01  # |loss through the runtime - multicam.simulate's| per strategy, 300-frame streams, N = 4
STATUSES = ("ok", "late", "lost", "refused")


def measured(record: dict, pl: dict, frames: int) -> dict:
  """Per strategy: the runtime's loss over the cameras that finished, and every frame's status."""
  devices = record["devices"]
  failed = {i: d["failed"] for i, d in enumerate(devices) if "failed" in d}
  out = {}
  for s in pl["strategies"]:
    runs = [d["strategies"][s] for d in devices if "failed" not in d]
    status = {k: sum(r["summary"]["status"][k] for r in runs) for k in STATUSES}
    status["lost"] += frames * len(failed)  # a dead camera's record went with its process
    loss = np.concatenate([r["frames"]["loss"] for r in runs]) if runs else np.asarray([np.nan])
    sent = [np.asarray(r["frames"]["sent"], bool) for r in runs]
    st = [np.asarray(r["frames"]["status"]) for r in runs]
    out[s] = {
      "loss": float(loss.mean()),
      "weak_loss": float(np.mean([r["summary"]["weak_loss"] for r in runs])) if runs else float("nan"),
      "frames": frames * len(devices),
      "status": status,
      "sent": int(sum(x.sum() for x in sent)),
      "strong_used": int(sum((x & (y == "ok")).sum() for x, y in zip(sent, st, strict=True))),
      "cameras_finished": len(runs),
      "p50_latency_s": float(np.median([r["summary"].get("p50_latency_s", np.nan) for r in runs]))
      if runs else float("nan"),
    }  # fmt: skip
  return {"strategies": out, "failed": failed}


def summary(record: dict, pred: dict, pl: dict, frames: int, info: dict) -> dict:
  """summary.json: measured, simulator and gap per strategy (the gap only when every camera finished)."""
  m = measured(record, pl, frames)
  complete = not m["failed"]
  gap = {s: abs(v["loss"] - pred[s]["loss"]) if complete else None for s, v in m["strategies"].items()}
  return {
    "cameras": pl["cameras"],
    "share": pl["share"],
    "switch_qpm": pl["switch"],
    "seeds": pl["seeds"],
    "measured": m["strategies"],
    "simulator": pred,
    "gap": gap,
    "failed_cameras": {str(k): v for k, v in m["failed"].items()},
    "export": info,
  }


def _tables(rep, summ: dict) -> None:
  rows = []
  for s, m in summ["measured"].items():
    p, g = summ["simulator"][s], summ["gap"][s]
    lo, hi = p["server_rule_spread"]
    rows.append([s, m["loss"], p["loss"], "-" if g is None else g, p["server_rule_loss"], f"{lo:.4f} .. {hi:.4f}",
                 m["strong_used"], round(p["granted"] * m["frames"]),
                 m["weak_loss"], p["strong_loss"]])  # fmt: skip
  rep.heading("Average loss per camera image: through the runtime and the simulator on the same streams")
  rep.table(["strategy", "runtime", "multicam.simulate, same streams", "gap", "server's rule, index order",
             f"server's rule, {fleet.ORDERS + 1} within-slot orders", "strong answers used (runtime)",
             "offloads through the switch (simulator)",
             "weak only", "strong only"], rows)  # fmt: skip
  rep.text(
    f"The gap must stay within {TOLERANCE}. Both make the same camera decisions on the same images; they differ "
    "where the switch is short within a slot: the simulator refills it by q_g after each camera's arrival and "
    "serves the cameras in index order, the server refills N q_g at the slot's start and serves requests as they "
    "arrive from the separate processes. The server's rule on the same streams (`offload.fleet.replay`) is given "
    "in index order and as its range over that order and 32 random orders within every slot: how far arrival "
    "order alone moves the loss. A refused offload keeps the weak result; a late answer too (the strong answers "
    "used are the offloads answered within the deadline)."
  )
  rows = [[s, m["frames"], *(m["status"][k] for k in STATUSES), m["sent"], m["cameras_finished"],
           m["p50_latency_s"] * 1e3] for s, m in summ["measured"].items()]  # fmt: skip
  rep.heading("Frames")
  rep.table(["strategy", "frames", *STATUSES, "sent", "cameras finished", "p50 latency (ms)"], rows)
  if summ["failed_cameras"]:
    dead = "; ".join(f"camera {k}: {v}" for k, v in summ["failed_cameras"].items())
    rep.text(
      f"Camera processes that died: {dead}. Their frames are counted lost; the losses are the other cameras'."
    )


def write_report(out_dir: Path, summ: dict, server_stats: dict | None) -> Path:
  """out_dir/report.md of a fleet deploy."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  from common.report import Report
  from common.serving import report as sr

  rep = Report("Offloading: a fleet of cameras behind one switch on the serving runtime", Path(out_dir))
  (r, b), (q, p, m) = summ["share"], summ["switch_qpm"]
  rep.text(
    f"{summ['cameras']} camera processes (stream seeds {summ['seeds']}) against one server whose switch admits "
    f"`offload_strong`'s requests through the aggregate bucket (q, p, m) = ({summ['cameras'] * q}, {p}, {m}) per "
    f"slot (the share (r, b) = ({r}, {b}) per camera: discretize(r, N b) = ({q}, {p}, {m}), q per camera "
    "arrival). Each camera runs the single-device deploy's loop with its strategy's policy and bucket; the "
    "simulator is `offload.multicam.simulate` on the images the cameras saw."
  )
  _tables(rep, summ)
  fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
  names = list(summ["measured"])
  xs = np.arange(len(names))
  ax.bar(xs - 0.2, [summ["measured"][s]["loss"] for s in names], 0.4, label="runtime")
  ax.bar(
    xs + 0.2, [summ["simulator"][s]["loss"] for s in names], 0.4, label="multicam.simulate, same streams"
  )
  ax.set_xticks(xs, names)
  ax.set_ylabel("average loss per camera image")
  rep.heading("Loss per strategy")
  sr.save(rep, fig, [ax], "fleet_loss.png", "fleet loss")
  if server_stats:
    rep.text(sr.server_text(server_stats))
  return rep.write()
