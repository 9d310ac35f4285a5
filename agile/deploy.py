"""AgileNN on the serving runtime: the device loop of an agile run's exports against a server.

Each frame the device takes the next test image (preprocessed as in training), runs the
exported device TFLite (int8 unless `--float`) in the LiteRT interpreter, keeps the local
logits and sends the remote symbols (one byte each, C order) compressed with the codec the
run's payload table found best (`payload.best_codec`, stdlib zlib / bz2 / lzma). The server
model `agile_remote` (written by `write_repository`) takes them: the server decompresses them
(`common.serving.codecs`, declared in its config.pbtxt), the ONNX graph looks the indices up in
the exported centroids and runs the remote ONNX part. The device combines local and remote
logits with the exported weights. A frame whose answer misses its deadline (late or lost) is
answered with the local prediction, as AgileNN allows, and counted as a fallback.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np

from common import safeio
from common.errors import CheckpointError, ConfigError
from common.serving import codecs
from common.serving import device as dev

MODEL = "agile_remote"


@dataclasses.dataclass
class Exports:
  workdir: Path
  metrics: dict  # final_metrics.json
  meta: dict  # exports/agile_meta.json
  codec: str
  runner: object
  int8: bool
  images: np.ndarray  # preprocessed test images [N, S, S, 3] (the parity images)
  labels: np.ndarray

  def device_part(self, x: np.ndarray) -> tuple[np.ndarray, bytes]:
    """One image -> (local logits [classes], the compressed symbols)."""
    outs = self.runner(x[None])
    local = next(o for o in outs if o.ndim == 2)[0].astype(np.float32)
    symbols = np.rint(next(o for o in outs if o.ndim == 4)).astype(np.uint8)
    return local, codecs.compress(self.codec, symbols.tobytes())

  def combine(self, local: np.ndarray, remote: np.ndarray) -> np.ndarray:
    w = np.asarray(self.meta["combination_weights"], np.float32)
    return w[0] * local + w[1] * np.asarray(remote, np.float32).reshape(local.shape)


def _need(path: Path, step: str) -> Path:
  if not path.exists():
    raise CheckpointError(f"{path} is missing; {step}")
  return path


def write_repository(workdir: str | Path, meta: dict, codec: str) -> Path:
  """exports/repository/agile_remote: SYMBOLS uint8 [h w r] (sent compressed with `codec`) ->
  centroid lookup -> the remote ONNX -> LOGITS."""
  import onnx

  from common.serving import repository, wire

  workdir = Path(workdir)
  rerun = f"rerun `edgeinfer agile export --config=... --workdir={workdir}`"
  remote = onnx.load(_need(workdir / "exports" / "agile_remote.onnx", rerun))
  shape = tuple(meta["remote_input_shape"][1:])
  merged = wire.prepend(
    lambda opset: wire.codebook_decoder(shape, meta["centroids"], out_name="dec/z", opset=opset), remote
  )
  repo = workdir / "exports" / "repository"
  repository.write_model(repo, MODEL, merged, codec=(codec, "SYMBOLS"))
  return repo


def load(workdir: str | Path, *, int8: bool = True) -> Exports:
  """The exports of an agile run and its parity images (raises CheckpointError naming the step)."""
  from agile import data as agile_data
  from common import export as export_lib

  workdir = Path(workdir)
  rerun = f"run `edgeinfer agile all --config=... --workdir={workdir}` first"
  config = safeio.load_json(_need(workdir / "config.json", rerun), what="run config", keys=("dataset",))
  metrics = safeio.load_json(
    _need(workdir / "final_metrics.json", rerun), what="final metrics", keys=("payload", "latency")
  )
  if "export" not in metrics:
    raise CheckpointError(f"{workdir} was trained with export.enabled = False; rerun with exports")
  meta = safeio.load_json(
    _need(workdir / "exports" / "agile_meta.json", rerun),
    what="export meta",
    keys=("centroids", "combination_weights", "remote_input_shape"),
  )
  path = workdir / "exports" / ("agile_device_int8.tflite" if int8 else "agile_device_float.tflite")
  runner = export_lib.make_tflite_runner(_need(path, rerun).read_bytes())
  _, test = agile_data.load(
    config["dataset"], data_dir=config.get("data_dir") or None, limit=config.get("limit") or None
  )
  n = int(metrics["export"]["parity_images"])
  prep = agile_data.make_preprocess(config["dataset"], config["input_size"])
  images = np.asarray(prep(test.images[:n]), np.float32)
  codec = metrics["payload"]["best_codec"]
  return Exports(workdir, metrics, meta, codec, runner, int8, images, np.asarray(test.labels[:n]))


FRAME_FIELDS = ("status", "arrival_s", "latency_s", "wait_s", "device_s", "link_s", "server_s", "wire_bytes")


def run(dep: Exports, client: dev.Client, link, *, frames: int, fps: float, deadline_s: float,
        progress=None) -> dict:  # fmt: skip
  """Streams `frames` frames (the parity images in order, cycling) over `link`; per-frame records
  and summary."""
  if frames < 1 or not fps > 0 or not deadline_s > 0:
    raise ConfigError(
      f"config.deploy: frames {frames}, fps {fps}, deadline {deadline_s}: must be >= 1, > 0, > 0"
    )
  n = len(dep.images)
  locals_: dict[int, np.ndarray] = {}

  def step(k: int, obs: dev.Observation) -> dev.Request:
    t = time.perf_counter()
    loc, payload = dep.device_part(dep.images[k % n])
    locals_[k] = loc
    feeds = {"SYMBOLS": np.frombuffer(payload, np.uint8)}
    return dev.Request(MODEL, feeds, "LOGITS", device_s=time.perf_counter() - t)

  rtt = client.base_rtt_s()
  results = dev.run_stream(client, step, frames=frames, fps=fps, deadline_s=deadline_s, link=link, rtt_s=rtt,
                           progress=progress)  # fmt: skip
  summ, frames_out = _account(dep, results, locals_, deadline_s)
  summ["reconnects"] = client.reconnects
  return {
    "summary": summ,
    "frames": frames_out,
    "rtt_s": rtt,
    "int8": dep.int8,
    "codec": dep.codec,
    "trace": {"name": link.trace.name, "mean_bps": link.trace.mean_bps()},
    "link": link.kind,
    "stream": {"fps": fps, "deadline_s": deadline_s},
  }


def _account(dep: Exports, results, locals_: dict, deadline_s: float) -> tuple[dict, dict]:
  """(summary, per-frame records): the combined prediction, or the local one where the answer missed."""
  frames = len(results)
  labels = dep.labels[np.arange(frames) % len(dep.images)]
  pred, fell_back = np.zeros(frames, int), np.zeros(frames, bool)
  for r in results:
    if r.status == "ok":
      pred[r.frame] = int(np.argmax(dep.combine(locals_[r.frame], r.output)))
    else:  # the deadline passed without an answer: the local prediction
      pred[r.frame], fell_back[r.frame] = int(np.argmax(locals_[r.frame])), True
  summ = dev.summary(results, deadline_s)
  lat = np.asarray([r.latency_s if r.status == "ok" else deadline_s for r in results])
  summ.update(
    accuracy=float((pred == labels).mean()),
    fallbacks=int(fell_back.sum()),
    fallback_rate=float(fell_back.mean()),
    answer_p50_latency_s=float(np.percentile(lat, 50)),
  )
  summ.update(dev.overhead(results))
  frames_out = {f: [getattr(r, f) for r in results] for f in FRAME_FIELDS}
  frames_out.update(prediction=pred.tolist(), label=labels.tolist(), fallback=fell_back.tolist())
  return summ, frames_out


def predict(dep: Exports, out: dict, trace) -> dict:
  """What the run's own figures predict for the same images: the split parity accuracy of the
  same device part, and the latency model's per-image time with the link at the trace's mean rate
  and the bytes measured on the wire."""
  e, m = dep.metrics["export"], out["summary"]
  row = dep.metrics["latency"][0]
  link_s = 8.0 * m["bytes_per_frame"] / out["trace"]["mean_bps"]
  return {
    "accuracy": e["int8_split_accuracy" if dep.int8 else "float_split_accuracy"],
    "parity_images": e["parity_images"],
    "device_s": row["device_s"],
    "link_s": link_s,
    "server_s": row["server_s"],
    "total_s": row["device_s"] + link_s + row["server_s"],
    "payload_bits_table": dep.metrics["payload"]["best_codec_bits_per_image"],
  }


def write_report(out_dir: Path, out: dict, pred: dict, server_stats: dict | None) -> Path:
  """out_dir/report.md: accuracy, fallbacks, latency CDF and bytes beside the run's own predictions."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  from common.report import Report
  from common.serving import report as sr

  out_dir = Path(out_dir)
  s, m = out["stream"], out["summary"]
  rep = Report("AgileNN on the serving runtime", out_dir)
  rep.text(
    f"{m['frames']} frames (the run's {pred['parity_images']} parity images in order) at {s['fps']:g} fps, "
    f"deadline {s['deadline_s'] * 1e3:.0f} ms, link `{out['link']}` on trace `{out['trace']['name']}` "
    f"(mean {out['trace']['mean_bps'] / 1e6:.3f} Mbit/s), device part {'int8' if out['int8'] else 'float'} "
    f"TFLite, remote symbols sent {out['codec']}-coded. Server and device ran as separate processes."
  )
  lat = sr.on_time(out["frames"]["latency_s"], s["deadline_s"])
  fin = lat[np.isfinite(lat)]
  rep.heading("Measured against the run's figures")
  rep.table(
    ["figure", "measured through the runtime", "the run's figure"],
    [
      ["accuracy (combined; local where the deadline was missed)", m["accuracy"], pred["accuracy"]],
      ["fallbacks to the local prediction", m["fallbacks"], 0],
      ["deadline-miss rate", m["deadline_miss_rate"], "-"],
      ["remote payload bits per image (codec)", 8 * float(np.mean(out["frames"]["wire_bytes"])), pred["payload_bits_table"]],
      ["p50 latency of on-time frames (ms)", float(np.percentile(fin, 50) * 1e3) if fin.size else "-", pred["total_s"] * 1e3],
    ],
  )  # fmt: skip
  rep.text(
    "The run's accuracy is its split parity figure (the same exported device part, decoded and combined "
    "in-process) on the same images; the bits per image in the run's column are the payload table's mean "
    "for the codec, the measured ones the whole serialized request. The latency model's figure is its device "
    f"and server time ({pred['device_s'] * 1e3:.3f} + {pred['server_s'] * 1e3:.3f} ms, a microcontroller and "
    f"a server as configured in the run) plus the measured request bytes at the trace's mean rate "
    f"({pred['link_s'] * 1e3:.3f} ms); the measured latency has this machine's device time instead. "
    f"Frames: {m['status']['ok']} answered in time, {m['status']['late']} late, {m['status']['lost']} lost "
    f"(reconnects {m['reconnects']}); each missed frame was answered with the local prediction."
  )
  fr = out["frames"]
  rep.table(
    ["median per frame (ms)", "device TFLite + codec", "link", "server ONNX"],
    [["measured", *(float(np.median(fr[k]) * 1e3) for k in ("device_s", "link_s", "server_s"))]],
  )
  fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
  sr.cdf(ax, lat, "measured")
  ax.axvline(pred["total_s"] * 1e3, color="tab:orange", ls=":", lw=1, label="latency model")
  ax.axvline(s["deadline_s"] * 1e3, color="k", ls="--", lw=1, label="deadline")
  ax.set_xlabel("end-to-end latency (ms)")
  ax.set_ylabel("fraction of frames")
  rep.heading("End-to-end latency (frames on time; the curve tops out at 1 - miss rate)")
  sr.save(rep, fig, [ax], "latency_cdf.png", "latency CDF")
  if server_stats:
    rep.text(sr.server_text(server_stats))
  return rep.write()


class AgileDeployment:
  """agile's `common.serving.runner.Deployment`: the device part local, the symbols to the server."""

  technique = "agile"

  def prepare(self, workdir: Path, settings: dict) -> dict:
    dep = load(workdir, int8=settings["int8"])
    write_repository(workdir, dep.meta, dep.codec)
    return {}

  def device(self, workdir: Path, settings: dict, client, link, progress) -> dict:
    dep = load(workdir, int8=settings["int8"])
    return run(dep, client, link, frames=settings["frames"], fps=settings["fps"], deadline_s=settings["deadline"],
               progress=progress)  # fmt: skip

  def predict(self, workdir: Path, settings: dict, record: dict, trace) -> dict:
    return predict(load(workdir, int8=settings["int8"]), record, trace)

  def summary(self, record: dict, prediction: dict, info: dict) -> dict:
    return {"measured": record["summary"], "predicted": prediction}

  def report(self, out_dir: Path, record: dict, prediction: dict, trace, server_stats, info: dict) -> Path:
    return write_report(out_dir, record, prediction, server_stats)

  def figures(self, record: dict, prediction: dict) -> dict:
    m = record["summary"]
    return {
      "accuracy": m["accuracy"],
      "split_parity_accuracy": prediction["accuracy"],
      "fallbacks": m["fallbacks"],
      "bytes_per_frame": m["bytes_per_frame"],
    }


DEPLOYMENT = AgileDeployment()
