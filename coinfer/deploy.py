"""RTCoInfer on the serving runtime: the device loop of a coinfer run's exports against a server.

Each frame the device takes the next test image, asks the controller (the same
`coinfer.controller` code the simulator runs, fed with the throughputs measured on the link)
for a setup, runs that setup's device TFLite (int8 where exported) in the LiteRT interpreter,
packs the kept channels at b bits plus the per-channel ranges (`common.serving.wire`) and sends
them to the setup's model `coinfer_<setup>` of the exports' model repository.

Before the stream the device calibrates a `controller.Profile` on the real system: the bytes
each setup puts on the wire, the median device time (the controller's decision plus the
device part and packing), and the median server answer time (the model's compute plus one
round trip). The controller plans with it, and `predict`
runs `coinfer.simulate` on the same trace with the same profile, which is the simulator's
prediction the deploy report sets beside every measured figure.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np

from coinfer import controller as C
from coinfer import simulate
from common import safeio
from common.errors import CheckpointError, ConfigError
from common.serving import device as dev
from common.serving import wire
from common.serving.report import cdf as _cdf
from common.serving.report import on_time as _on_time
from common.serving.report import save as _save

CONTROLLERS = ("mpc", "rate", "buffer", "fixed:<setup>")
# The simulator's figures are means over this many draws of the server's answer times: in closed loop
# a sub-millisecond difference can turn a controller's next choice, so one draw's deadline-miss rate
# moves by up to 0.04 over 300 frames on the shared traces' tc runs (docs/deploy.md).
PREDICT_DRAWS = 10


@dataclasses.dataclass
class Exports:
  """What the device holds: per exported setup its name, (c, b), model and device runner."""

  workdir: Path
  config: dict
  names: list[str]
  channels: list[int]
  bits: list[int]
  models: list[str]
  runners: list
  int8: list[bool]
  images: np.ndarray  # test images [N, H, W, 3] in [0, 1]
  labels: np.ndarray
  correct: np.ndarray  # [S, N] the SW-CNN's per-image correctness (the simulator's matrix)

  def encode(self, i: int, image: np.ndarray) -> dict:
    z = self.runners[i](image[None])[0]
    payload, ranges = wire.encode(z, self.bits[i])
    return {"PAYLOAD": np.frombuffer(payload, np.uint8), "RANGES": ranges}


def load(workdir: str | Path, *, int8: bool = True) -> Exports:
  """The exports of a coinfer run (raises CheckpointError saying which step to run)."""
  from common import data as data_lib
  from common import export as export_lib

  workdir = Path(workdir)
  paths = {n: workdir / f for n, f in (("config", "config.json"), ("export", "export.json"))}
  for n, p in paths.items():
    if not p.exists():
      raise CheckpointError(
        f"{p} is missing; run `edgeinfer coinfer {'export' if n == 'export' else 'all'} --config=... --workdir={workdir}`"
      )
  config = safeio.load_json(paths["config"], what="run config", keys=("data", "setups", "stream"))
  rows = safeio.load_json(paths["export"], what="export result", keys=("setups",))["setups"]
  if not rows or "model" not in rows[0]:
    raise CheckpointError(
      f"{paths['export']} has no model repository; rerun `edgeinfer coinfer export --config=... --workdir={workdir}`"
    )
  names, runners, is8 = [], [], []
  for r in rows:
    d = workdir / "exports" / r["setup"]
    f8, f = d / "device_int8.tflite", d / "device.tflite"
    use8 = int8 and f8.exists()
    path = f8 if use8 else f
    if not path.exists():
      raise CheckpointError(
        f"{path} is missing; rerun `edgeinfer coinfer export --config=... --workdir={workdir}`"
      )
    runners.append(export_lib.make_tflite_runner(path.read_bytes()))
    names.append(r["setup"])
    is8.append(use8)
  d = config["data"]
  _, test = data_lib.load(
    d["name"], data_dir=d["data_dir"] or None, image_size=d["image_size"], limit=d["limit"]
  )
  cpath = workdir / "distill_I-D-C_correct.npy"
  if not cpath.exists():
    raise CheckpointError(
      f"{cpath} is missing; run `edgeinfer coinfer distill --config=... --workdir={workdir}`"
    )
  from coinfer import compress

  grid = compress.make_setups(config["setups"]["channels"], config["setups"]["bits"])
  index = {s.name: i for i, s in enumerate(grid)}
  every = safeio.load_array(cpath, what="per-image results", shape=(len(grid), len(test)))
  correct = every[[index[n] for n in names]].astype(bool)
  return Exports(
    workdir,
    config,
    names,
    [r["channels"] for r in rows],
    [r["bits"] for r in rows],
    [r["model"] for r in rows],
    runners,
    is8,
    test.images.astype(np.float32),
    test.labels,
    correct,
  )


def calibrate(dep: Exports, client: dev.Client, *, repeats: int = 15, link=None) -> tuple[C.Profile, dict]:
  """Bytes on the wire, median device seconds and median server answer seconds per setup; and
  {"answer_s": every server answer time but the first two per setup} with, where the link's shaper
  counts (the tc link; unshaped then), what it counted per request (bytes and packets, headers and
  ACKs included) and its settings: the simulator's `linkmodel.TcpTbfLink`."""
  bits, t_dev, t_srv, counted, answers = [], [], [], [], []
  for i in range(len(dep.names)):
    td, ts = [], []
    before = link.wire_counter() if link is not None else None
    for k in range(repeats):
      image = dep.images[k % len(dep.images)]
      t = time.perf_counter()
      feeds = dep.encode(i, image)
      td.append(time.perf_counter() - t)
      t = time.perf_counter()
      client.infer(dev.Request(dep.models[i], feeds, "LOGITS"), timeout_s=5.0)
      ts.append(time.perf_counter() - t)
    if before is not None:
      time.sleep(0.1)  # the last answer's delayed ACK
      after = link.wire_counter()
      counted.append([(a - b) / repeats for a, b in zip(after, before, strict=True)])
    bits.append(8.0 * dev.request_bytes(dev.Request(dep.models[i], feeds, "LOGITS")))
    t_dev.append(float(np.median(td)))
    t_srv.append(float(np.median(ts[2:])))
    answers.append(ts[2:])
  prof = C.Profile(
    tuple(dep.names), np.asarray(bits), dep.correct.mean(axis=1), np.asarray(t_dev), np.asarray(t_srv)
  )
  wire = {}
  if counted:
    wire = {"wire_bytes": [c[0] for c in counted], "wire_packets": [c[1] for c in counted], **link.shaping()}
  return prof, {**wire, "answer_s": answers}


def make_controller(spec: str, prof: C.Profile, stream: dict):
  """`mpc` (the config's stream.* settings), `rate`, `buffer` or `fixed:<setup name>`."""
  s = stream
  if spec == "mpc":
    return C.make_mpc(
      prof,
      s["horizon"],
      fps=s["fps"],
      deadline_s=s["deadline_s"],
      history=s["history"],
      margin=s["margin"],
      method=s["method"],
    )
  if spec == "rate":
    return C.make_rate_based(prof, fps=s["fps"], history=s["history"])
  if spec == "buffer":
    return C.make_buffer_based(prof, fps=s["fps"], deadline_s=s["deadline_s"], history=s["history"])
  if spec.startswith("fixed:") and spec[6:] in prof.names:
    return C.make_fixed(prof.names.index(spec[6:]))
  raise ConfigError(
    f"--controller {spec!r}: must be one of {list(CONTROLLERS)} with a setup among {list(prof.names)}"
  )


def make_step(dep: Exports, controller: C.Controller):
  """The device's per-frame step, and a function returning the controller's state so far."""
  held = [controller.init()]

  def step(k: int, obs: dev.Observation) -> dev.Request:
    t = time.perf_counter()
    i, held[0] = controller.update(
      C.ControlState(k, obs.time_s, obs.backlog_bits, obs.throughputs_bps, pending=obs.pending), held[0]
    )
    i = int(i)
    t1 = time.perf_counter()
    feeds = dep.encode(i, dep.images[k % len(dep.images)])
    return dev.Request(
      dep.models[i], feeds, "LOGITS", setup=i, device_s=time.perf_counter() - t1, control_s=t1 - t
    )

  return step, lambda: held[0]


def stream_settings(dep: Exports, *, fps: float | None, deadline_s: float | None) -> dict:
  s = dict(dep.config["stream"])
  s["fps"] = float(fps or s["fps"])
  s["deadline_s"] = float(deadline_s or s["deadline_s"])
  if s["fps"] <= 0 or s["deadline_s"] <= 0:
    raise ConfigError(f"fps {s['fps']} and deadline {s['deadline_s']} s must be > 0")
  return s


def calibrated_profile(dep: Exports, client: dev.Client, controller: str, stream: dict, link=None):
  """`calibrate`, with the controller's own decision time added to the device time (it runs
  before the device part, so the controller plans with both); and the link's wire profile."""
  prof, wire = calibrate(dep, client, link=link)
  probe = make_controller(controller, prof, stream)
  state = C.ControlState(0, 0.0, 0.0, (float(np.median(prof.bits)) * stream["fps"],))
  t_ctl, probe_state = [], probe.init()
  for _ in range(5):
    t = time.perf_counter()
    _, probe_state = probe.update(state, probe_state)
    t_ctl.append(time.perf_counter() - t)
  return dataclasses.replace(prof, t_dev=prof.t_dev + float(np.median(t_ctl))), wire


FRAME_FIELDS = ("setup", "status", "arrival_s", "latency_s", "wait_s", "control_s", "device_s", "link_s",
                "server_s", "wire_bytes", "closed_s")  # fmt: skip


def run(dep: Exports, client: dev.Client, link, *, frames: int, controller: str, stream: dict,
        progress=None) -> dict:  # fmt: skip
  """Calibrates, streams `frames` frames over `link` (`common.serving.link.Link`, along its trace),
  and returns per-frame records, summary and profile."""
  if frames < 1:
    raise ConfigError(f"config.deploy.frames = {frames}: must be >= 1")
  prof, wire = calibrated_profile(dep, client, controller, stream, link)
  rtt = client.base_rtt_s()
  step, controller_state = make_step(dep, make_controller(controller, prof, stream))
  results = dev.run_stream(client, step, frames=frames, fps=stream["fps"], deadline_s=stream["deadline_s"],
                           link=link, rtt_s=rtt, history=11, progress=progress)  # fmt: skip
  summ, pred, labels = stream_summary(dep, results, prof, stream["deadline_s"])
  summ.update(reconnects=client.reconnects, fallbacks=int(controller_state().fallbacks))
  frames_out = {f: [getattr(r, f) for r in results] for f in FRAME_FIELDS}
  frames_out["prediction"], frames_out["label"] = pred.tolist(), labels.tolist()
  names = ("names", "bits", "accuracy", "t_dev", "t_srv")
  profile = {
    n: (list(v) if n == "names" else v.tolist())
    for n, v in zip(names, dataclasses.astuple(prof), strict=True)
  }
  return {
    "summary": summ,
    "frames": frames_out,
    "profile": profile,
    "rtt_s": rtt,
    "int8": dep.int8,
    "trace": {"name": link.trace.name, "mean_bps": link.trace.mean_bps()},
    "link": link.kind,
    "wire": {**wire, "change_lag_s": link.change_lag_s()},
    "controller": controller,
    "stream": stream,
  }


def stream_summary(dep: Exports, results, prof: C.Profile, deadline_s: float):
  """(summary, predictions, labels) of a finished stream: miss rate, accuracies, overhead."""
  frames, n = len(results), len(dep.images)
  pred = np.asarray([int(np.argmax(r.output)) if r.output is not None else -1 for r in results])
  labels = dep.labels[np.arange(frames) % n]
  answered = pred >= 0
  ok = np.asarray([r.status == "ok" for r in results])
  summ = dev.summary(results, deadline_s)
  summ.update(
    accuracy=float((pred[answered] == labels[answered]).mean()) if answered.any() else 0.0,
    timely_accuracy=float(((pred == labels) & ok).mean()),
    expected_accuracy=float(prof.accuracy[[r.setup for r in results]].mean()),
    mean_queue_s=float(np.mean([r.link_s for r in results if r.status == "ok"] or [0.0])),
  )
  summ.update(dev.overhead(results))
  return summ, pred, labels


def predict(dep: Exports, out: dict, trace, draws: int = PREDICT_DRAWS) -> dict:
  """The simulator on the same trace, profile, controller and images as the measured run, `draws`
  times with the server's answer times drawn with seeds 0, 1, ...: the summary's figures are the
  means over the draws, `spread` their (min, max); the per-frame series are draw 0's, and
  `latency_s_draws` holds every draw's latencies."""
  if draws < 1:
    raise ConfigError(f"draws = {draws}: the simulator needs at least one draw")
  p = out["profile"]
  prof = C.Profile(
    tuple(p["names"]),
    np.asarray(p["bits"]),
    np.asarray(p["accuracy"]),
    np.asarray(p["t_dev"]),
    np.asarray(p["t_srv"]),
  )
  ctl = make_controller(out["controller"], prof, out["stream"])  # pure: each run starts from ctl.init()
  sims = [_simulate_once(dep, out, trace, prof, ctl, seed) for seed in range(draws)]
  keys = sims[0]["summary"].keys()
  summ = {k: float(np.mean([x["summary"][k] for x in sims])) for k in keys}
  summ["spread"] = {k: [float(min(x["summary"][k] for x in sims)), float(max(x["summary"][k] for x in sims))]
                    for k in keys}  # fmt: skip
  summ["draws"] = draws
  first = sims[0]
  return {"summary": summ, "setup": first["setup"], "latency_s": first["latency_s"], "queue_s": first["queue_s"],
          "latency_s_draws": [x["latency_s"] for x in sims]}  # fmt: skip


def _simulate_once(dep: Exports, out: dict, trace, prof: C.Profile, ctl: C.Controller, seed: int) -> dict:
  """One closed-loop run of the simulator with answer-time draw `seed`: its summary and per-frame series."""
  s = out["stream"]
  sim = simulate.run(
    ctl,
    trace,
    profile=prof,
    fps=s["fps"],
    deadline_s=s["deadline_s"],
    frames=len(out["frames"]["setup"]),
    correct=dep.correct,
    history=11,
    link=link_model(
      out.get("wire") or {}, trace, out["rtt_s"], s["fps"], s["deadline_s"], **out.get("link_variant", {})
    ),
    rtt_s=out["rtt_s"],
    answer_s=(out.get("wire") or {}).get("answer_s"),
    seed=seed,
  )
  summ = dict(sim["summary"])
  met = sim["met"] > 0  # the frames the device gets an answer for (a late one is cancelled at its deadline)
  summ["answered_accuracy"] = float(sim["correct"][met].mean()) if met.any() else 0.0
  summ["bytes_per_frame"] = float(np.mean(prof.bits[sim["setup"].astype(int)]) / 8)
  return {"summary": summ, "setup": sim["setup"].astype(int).tolist(), "latency_s": sim["latency_s"].tolist(),
          "queue_s": sim["queue_s"].tolist()}  # fmt: skip


def link_model(wire: dict, trace, rtt_s: float = 0.0, fps: float = 0.0, deadline_s: float = 0.2, **variants):
  """The simulator's link for a run's calibrated wire profile where the run's link counted its bytes
  (tc): `common.linkmodel.TcpTbfLink`, or with `variants` (`common.linkmodel.VARIANTS`) the bucket
  alone, `TbfLink`; else None (the trace as a fluid FIFO, the pacer's)."""
  from common import linkmodel

  if "wire_bytes" not in wire:
    return None
  w = linkmodel.WireProfile(np.asarray(wire["wire_bytes"]), np.asarray(wire["wire_packets"]))
  kwargs = dict(burst_bytes=wire["burst_bytes"], floor_bps=wire["floor_bps"], latency_s=wire["latency_ms"] / 1e3,
                change_lag_s=wire.get("change_lag_s", 0.0), rtt_s=rtt_s, sends_every_s=1.0 / fps if fps else 0.0)  # fmt: skip
  if variants:
    return linkmodel.TbfLink(trace, w, **kwargs, **{k: v for k, v in variants.items() if k != "bucket_only"})
  return linkmodel.TcpTbfLink(trace, w, deadline_s=deadline_s, **kwargs)


def _figure_rows(out: dict, pred: dict) -> list:
  s, m, p = out["stream"], out["summary"], pred["summary"]
  rows = [
    ["deadline-miss rate", m["deadline_miss_rate"], p["deadline_miss_rate"]],
    ["accuracy of the returned predictions", m["accuracy"], p["accuracy"]],
    ["accuracy of the frames answered in time", m["accuracy"], p["answered_accuracy"]],
    ["timely accuracy (correct and on time)", m["timely_accuracy"], p["timely_accuracy"]],
    ["expected accuracy of the chosen setups", m["expected_accuracy"], p["expected_accuracy"]],
    ["bytes per frame", m["bytes_per_frame"], p["bytes_per_frame"]],
    ["mean queueing delay of on-time frames, hand-over to the last byte out (ms)", m["mean_queue_s"] * 1e3,
     p["mean_queue_s"] * 1e3],
  ]  # fmt: skip
  lo, hi = p["spread"]["deadline_miss_rate"]
  rows.insert(
    1, ["deadline-miss rate, the simulator's range over its answer-time draws", "-", f"{lo:.4g}-{hi:.4g}"]
  )
  lat_m, lat_p = (
    _on_time(out["frames"]["latency_s"], s["deadline_s"]),
    _on_time(np.concatenate(pred["latency_s_draws"]), s["deadline_s"]),
  )
  for q in (50, 90):
    vm, vp = lat_m[np.isfinite(lat_m)], lat_p[np.isfinite(lat_p)]
    rows.append(
      [f"p{q} latency of on-time frames (ms)"]
      + [float(np.percentile(v, q) * 1e3) if v.size else "-" for v in (vm, vp)]
    )
  return rows


def _plots(rep, out: dict, pred: dict, trace) -> None:
  import matplotlib.pyplot as plt

  s = out["stream"]
  fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
  _cdf(ax, _on_time(out["frames"]["latency_s"], s["deadline_s"]), "measured")
  _cdf(ax, _on_time(pred["latency_s"], s["deadline_s"]), "simulator")
  ax.axvline(s["deadline_s"] * 1e3, color="k", ls="--", lw=1, label="deadline")
  ax.set_xlabel("end-to-end latency (ms)")
  ax.set_ylabel("fraction of frames")
  rep.heading("End-to-end latency (frames on time; the curves top out at 1 - miss rate)")
  _save(rep, fig, [ax], "latency_cdf.png", "latency CDF")
  t = np.asarray(out["frames"]["arrival_s"])
  fig, (a1, a2) = plt.subplots(2, 1, figsize=(7, 5), dpi=110, sharex=True)
  a1.plot(t, [trace.rate_at(x) / 1e6 for x in t], drawstyle="steps-post")
  a1.set_ylabel("bandwidth (Mbit/s)")
  kb = np.asarray(out["profile"]["bits"]) / 8e3
  a2.plot(t, kb[np.asarray(out["frames"]["setup"])], drawstyle="steps-post", label="measured run")
  a2.plot(t, kb[np.asarray(pred["setup"])], drawstyle="steps-post", ls="--", label="simulator")
  a2.set_ylabel("chosen setup (kB on the wire)")
  a2.set_xlabel("time (s)")
  rep.heading("Chosen setup against the bandwidth")
  _save(rep, fig, [a1, a2], "setup_vs_bandwidth.png", "setup vs bandwidth")
  _queue_plot(rep, out, pred)


def _queue_plot(rep, out: dict, pred: dict) -> None:
  """The queueing delay of every frame, hand-over to the link until its last byte left: measured
  (the pacer's hold, or on tc the device's estimate from the answer; 0 for a frame not answered)
  and the simulator's."""
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(7, 3), dpi=110)
  k = np.arange(len(out["frames"]["link_s"]))
  ax.plot(k, np.asarray(out["frames"]["link_s"]) * 1e3, lw=0.8, label="measured")
  ax.plot(k, np.asarray(pred["queue_s"]) * 1e3, lw=0.8, ls="--", label="simulator")
  ax.set_xlabel("frame")
  ax.set_ylabel("queueing delay (ms)")
  rep.heading("Queueing delay per frame (hand-over to the link until the last byte left)")
  _save(rep, fig, [ax], "queueing_delay.png", "queueing delay per frame")


def write_report(out_dir: Path, out: dict, pred: dict, trace, server_stats: dict | None) -> Path:
  """out_dir/report.md: measured figures beside the simulator's, latency CDF, setup vs bandwidth."""
  import matplotlib

  matplotlib.use("Agg")
  from common.report import Report
  from common.serving import report as sr

  s, m = out["stream"], out["summary"]
  rep = Report("coinfer on the serving runtime", Path(out_dir))
  kind = "int8" if all(out["int8"]) else ("float" if not any(out["int8"]) else "int8 where exported")
  rep.text(
    f"{m['frames']} frames at {s['fps']:g} fps, deadline {s['deadline_s'] * 1e3:.0f} ms, controller `{out['controller']}`, "
    f"link `{out['link']}` on trace `{trace.name}` (mean {trace.mean_bps() / 1e6:.3f} Mbit/s), device parts {kind}. "
    "Server and device ran as separate processes; the simulator ran `coinfer.simulate` on the same trace with the "
    "profile calibrated on this system (below) and the same controller and images, "
    f"{pred['summary']['draws']} times with other draws of the server's answer times: its figures are the "
    "means over the draws (latency percentiles over all of them), its plots the first draw's."
  )
  rep.heading("Measured against the simulator")
  rep.table(["figure", "measured", "simulator"], _figure_rows(out, pred))
  rep.text(
    sr.frames_text(m)
    + " The measured accuracy is over the answered frames, the simulator's over all frames, and"
    " over the frames it answers in time on the next row (the device's answered frames are those: a"
    " late request is cancelled at its deadline)."
  )
  if "overhead_p50_ms" in m:
    rep.text(sr.overhead_text(m))
  _plots(rep, out, pred, trace)
  pr = out["profile"]
  rep.heading("Profile calibrated on this system (what the controller and the simulator plan with)")
  rep.table(
    ["setup", "bytes on the wire", "SW-CNN accuracy", "controller + device ms", "server answer ms"],
    [[n, b / 8, a, d * 1e3, v * 1e3] for n, b, a, d, v in
     zip(pr["names"], pr["bits"], pr["accuracy"], pr["t_dev"], pr["t_srv"], strict=True)],
  )  # fmt: skip
  if server_stats:
    rep.text(sr.server_text(server_stats))
  return rep.write()


class CoinferDeployment:
  """coinfer's `common.serving.runner.Deployment`: the MPC (or a baseline) picks each frame's setup."""

  technique = "coinfer"

  def prepare(self, workdir: Path, settings: dict) -> dict:
    load(workdir, int8=settings["int8"])  # the exports are complete (CheckpointError names the step)
    return {}

  def device(self, workdir: Path, settings: dict, client, link, progress) -> dict:
    dep = load(workdir, int8=settings["int8"])
    stream = stream_settings(dep, fps=settings["fps"], deadline_s=settings["deadline"])
    return run(dep, client, link, frames=settings["frames"], controller=settings["controller"], stream=stream,
               progress=progress)  # fmt: skip

  def predict(self, workdir: Path, settings: dict, record: dict, trace) -> dict:
    return predict(load(workdir, int8=settings["int8"]), record, trace)

  def summary(self, record: dict, prediction: dict, info: dict) -> dict:
    return {"measured": record["summary"], "simulator": prediction["summary"]}

  def report(self, out_dir: Path, record: dict, prediction: dict, trace, server_stats, info: dict) -> Path:
    return write_report(out_dir, record, prediction, trace, server_stats)

  def figures(self, record: dict, prediction: dict) -> dict:
    m, s = record["summary"], prediction["summary"]
    return {
      "frames": m["frames"],
      "miss_rate": m["deadline_miss_rate"],
      "sim_miss_rate": s["deadline_miss_rate"],
      "accuracy": m["accuracy"],
      "sim_accuracy": s["accuracy"],
      "bytes_per_frame": m["bytes_per_frame"],
      "overhead_p50_ms": m.get("overhead_p50_ms", float("nan")),
    }


DEPLOYMENT = CoinferDeployment()
