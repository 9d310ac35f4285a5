"""The report of `edgeinfer offload deploy`: each policy's loss through the runtime beside the
simulator's on the same stream, misses, bytes per frame, the latency CDF and the bucket over time."""

from __future__ import annotations

from pathlib import Path

import numpy as np

TOLERANCE = 0.005  # the loss through the runtime against the simulator's on the same stream


def gaps(runs: dict, preds: dict) -> dict:
  """|loss through the runtime - the simulator's| per policy."""
  return {p: abs(runs[p]["summary"]["loss"] - preds[p]["loss"]) for p in runs}


def _intro(runs: dict) -> str:
  first = next(iter(runs.values()))
  s, st = first["setting"], first["stream"]
  order = {"iid": "i.i.d.", "location_reset": "location-reset"}.get(st["order"], st["order"])
  arr = {"periodic": "periodic", "markov": "Markov-modulated"}.get(st["arrivals"], st["arrivals"])
  return (
    f"{first['summary']['frames']} images per policy, {order} order, {arr} arrivals (slot {1e3 / st['fps']:.0f} ms, "
    f"stream seed {st['seed']}), deadline {st['deadline_s'] * 1e3:.0f} ms, token bucket r = {s['tr']}, b = {s['tb']} "
    f"((q, p, m) = {tuple(s['qpm'])}), link `{first['link']}` on trace `{first['trace']['name']}` "
    f"(mean {first['trace']['mean_bps'] / 1e6:.3f} Mbit/s). The device ran the weak classifier's TFLite and the "
    "policy's export, the server the strong classifier's ONNX, as separate processes; the simulator ran "
    "`offload.simulate` with the same policy on the same images and intervals."
  )


def _loss_table(rep, runs: dict, preds: dict) -> None:
  first = next(iter(runs.values()))
  rows = []
  for p, out in runs.items():
    m, pr = out["summary"], preds[p]
    rows.append([p.upper(), m["loss"], pr["loss"], abs(m["loss"] - pr["loss"]),
                 "-" if pr["test_streams_loss"] is None else pr["test_streams_loss"]])  # fmt: skip
  rows.append(["weak only", first["summary"]["weak_loss"], preds[next(iter(preds))]["weak_loss"], "", ""])
  streams = preds[next(iter(preds))]["test_streams"]
  rep.heading("Average loss: through the runtime and the simulator on the same stream")
  rep.table(
    ["policy", "runtime", "simulator, same stream", "gap", f"simulator, test streams {streams}"], rows
  )
  rep.text(
    f"The gap must stay within {TOLERANCE} (both run the same decisions on the same images; it moves only where "
    "the exported models' float results differ from JAX's, or where an answer missed its deadline and the weak "
    "prediction stood in). The last column is the run's own simulation (`results.json`) on its longer test streams."
  )


def _decision_table(rep, runs: dict, preds: dict, export_info: dict) -> None:
  first = next(iter(runs.values()))
  rows = []
  for p, out in runs.items():
    m, pr = out["summary"], preds[p]
    rows.append([p.upper(), m["offload_fraction"], pr["offload_fraction"], m["occupancy"], pr["occupancy"],
                 m["fallbacks"], m["deadline_miss_rate"], m["bytes_per_frame"], m["bytes_per_offload"]])  # fmt: skip
  rep.heading("Decisions, misses and bytes")
  rep.table(
    ["policy", "offloaded", "offloaded (simulator)", "mean n/m", "mean n/m (simulator)", "answers past the deadline",
     "deadline-miss rate", "bytes per frame", "bytes per offload"],
    rows,
  )  # fmt: skip
  rep.text(
    f"A frame kept on the device is answered there (no bytes); a sent one costs the serialized request. Weak "
    f"TFLite metric against the simulator's over the test split: max |difference| {first['metric_check']:.2g} "
    f"(z units). Exports: weak TFLite {export_info.get('weak_tflite_bytes', '-')} bytes (max |logit error| "
    f"{export_info.get('weak_max_abs_err', float('nan')):.2g}), strong ONNX max |logit error| "
    f"{export_info.get('strong_max_abs_err', float('nan')):.2g}."
  )


def _plots(rep, runs: dict, preds: dict) -> None:
  import matplotlib.pyplot as plt

  from common.serving import report as sr

  first = next(iter(runs.values()))
  s, st = first["setting"], first["stream"]
  fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
  for p, out in runs.items():
    sent = np.asarray(out["frames"]["sent"], bool)
    lat = sr.on_time(out["frames"]["latency_s"], st["deadline_s"])
    sr.cdf(ax, lat, f"{p.upper()}: all frames")
    sr.cdf(ax, lat[sent], f"{p.upper()}: offloaded frames")
  ax.axvline(st["deadline_s"] * 1e3, color="k", ls="--", lw=1, label="deadline")
  ax.set_xscale("log")
  ax.set_xlabel("latency (ms)")
  ax.set_ylabel("fraction of frames")
  rep.heading("Latency (frames on time; the curves top out at 1 - miss rate)")
  sr.save(rep, fig, [ax], "latency_cdf.png", "latency CDF")
  fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4), dpi=110)
  names = list(runs)
  xs = np.arange(len(names))
  a1.bar(xs - 0.2, [runs[p]["summary"]["loss"] for p in names], 0.4, label="runtime")
  a1.bar(xs + 0.2, [preds[p]["loss"] for p in names], 0.4, label="simulator, same stream")
  a1.set_xticks(xs, [p.upper() for p in names])
  a1.set_ylabel("average loss")
  for p, out in runs.items():
    t, n = np.asarray(out["frames"]["arrival_s"]), np.asarray(out["frames"]["tokens"])
    a2.plot(t, n / s["qpm"][2], drawstyle="steps-post", lw=0.8, label=p.upper())
  a2.set_xlabel("time (s)")
  a2.set_ylabel("bucket n / m at decision")
  rep.heading("Loss beside the simulator's, and the bucket over time")
  sr.save(rep, fig, [a1, a2], "loss_vs_simulator.png", "loss and bucket")


def write_report(
  out_dir: Path, runs: dict, preds: dict, server_stats: dict | None, export_info: dict
) -> Path:
  """out_dir/report.md for {policy: device record} and {policy: offload.deploy.predict}."""
  import matplotlib

  matplotlib.use("Agg")
  from common.report import Report
  from common.serving import report as sr

  rep = Report("Offloading under a token bucket on the serving runtime", Path(out_dir))
  rep.text(_intro(runs))
  _loss_table(rep, runs, preds)
  _decision_table(rep, runs, preds, export_info)
  _plots(rep, runs, preds)
  if server_stats:
    rep.text(sr.server_text(server_stats))
  return rep.write()
