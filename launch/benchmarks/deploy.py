"""deploy benchmark: the serving runtime on a coinfer run's exports.

  python -m launch.bench deploy [--workdir runs/quickstart/coinfer --seconds 5 --frames 300]

1. Server throughput and latency: requests per second and p50 / p99 client-side latency of
   the largest exported setup at 1, 4 and 16 concurrent streams over loopback (each stream a
   thread with its own gRPC channel issuing requests back to back; client and server share
   the machine's cores).
2. A deployment (`launch.deploy`, pacer link, MPC) on a Markov trace: the runtime's own
   overhead per frame (end-to-end minus controller, device TFLite, link and server ONNX
   time, all measured in the same run; target <= 1 ms at p50) and the reality-versus-
   simulation gap in deadline-miss rate and accuracy (target <= 0.02); beside the overhead, the
   transport's floor under it (`transport_floor`: the protocol's round trip at the stream's pace,
   less the server's compute).

  python -m launch.bench deploy --links [--link-kinds pacer,tc --link-controllers mpc,rate,buffer]

instead runs coinfer on every shared cellular trace and the Markov trace over both links
(`launch.benchmarks.links`): measured and predicted miss rate and accuracy, and their gaps.

  python -m launch.bench deploy --load [--load-streams 32 --load-seconds 60 --load-fps 20]

instead runs the runtime under load and faults (`common.serving.faults`, full form):
32 device streams for 60 s against one server process, every answer checked against its own
input's expected output; a stream through two server kills and restarts; a stream over a link
at zero rate for 5 s; healthy streams beside a garbage-sending device. The model is the
largest one of RUN/exports/repository when the run has one, else the ONNX wire decoder of the
quick runs' N32Q8 payload (8x8x32 codes at 8 bits).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def add_args(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--workdir", default="runs/quickstart/coinfer", help="a coinfer run with exports")
  parser.add_argument("--seconds", type=float, default=5.0, help="per concurrency level")
  parser.add_argument("--streams", default="1,4,16")
  parser.add_argument("--frames", type=int, default=300)
  parser.add_argument("--fps", type=float, default=10.0)
  parser.add_argument("--trace", default="markov")
  parser.add_argument("--trace-scale", type=float, default=0.05)
  parser.add_argument(
    "--run_dir",
    default="runs/bench/deploy_run",
    help="where the deployment, the load and the link runs write",
  )
  parser.add_argument("--load", action="store_true", help="the load and fault scenarios instead")
  parser.add_argument("--load-streams", type=int, default=32)
  parser.add_argument("--load-seconds", type=float, default=60.0)
  parser.add_argument("--load-fps", type=float, default=20.0, help="frames per second of each stream")
  parser.add_argument("--load-deadline", type=float, default=1.0)
  parser.add_argument("--load-processes", type=int, default=4, help="device processes the streams share")
  from launch.benchmarks import links

  links.add_args(parser)


def _load(url: str, repo: Path, model: str, feeds: dict, streams: int, seconds: float) -> dict:
  """`launch.benchmarks.serve.throughput` of gRPC clients sending `feeds` to `model` at `url`."""
  from common.serving import repository
  from launch.benchmarks import serve

  m = repository.load_model(repo / model)[-1]
  return serve.throughput(serve.client_call("grpc", url, m, feeds, m.run(feeds)[0]), streams, seconds)


def transport_floor(url: str, model: str, feeds: dict, output: str, *, fps: float, n: int = 100) -> dict:
  """The protocol's round trip at the stream's own pace (one call every 1 / fps s, as a frame
  comes): a bare `ServerLive` and a `ModelInfer` of `feeds` less the compute the server reports,
  p50 in ms. The runtime overhead cannot go below the latter; what is above it is the device
  loop's own (its threads, the link, the ledger)."""
  import time

  from tritonclient.grpc import service_pb2

  from common.serving import device as dev

  client = dev.Client(url)
  client.connect(10.0)
  msg = dev.infer_request(dev.Request(model, feeds, output), "0")
  live, infer = [], []
  try:
    for k in range(n + 5):
      time.sleep(1.0 / fps)
      t = time.perf_counter()
      client.stub.ServerLive(service_pb2.ServerLiveRequest(), timeout=5.0)
      t1 = time.perf_counter()
      time.sleep(1.0 / fps)
      t2 = time.perf_counter()
      resp = client.stub.ModelInfer(msg, timeout=5.0)
      if k >= 5:  # the first calls warm the channel
        live.append(t1 - t)
        infer.append(time.perf_counter() - t2 - dev.compute_s(resp))
  finally:
    client.close()
  return {
    "server_live_rtt_p50_ms": float(np.median(live) * 1e3),
    "infer_rtt_less_compute_p50_ms": float(np.median(infer) * 1e3),
  }


def _load_model(args) -> tuple[Path, str]:
  from common.serving import faults, repository

  repo = Path(args.workdir) / "exports" / "repository"
  if repo.is_dir():
    models = repository.load_repository(repo)
    size = {
      n: sum(s.nbytes for s in max(v.values(), key=lambda m: int(m.version)).inputs)
      for n, v in models.items()
    }
    return repo, max(size, key=size.get)
  repo = Path(args.run_dir) / "load_repository"
  return repo, faults.wire_repository(repo)


def _strip(rec: dict) -> dict:
  return {k: v for k, v in rec.items() if k != "latencies_ms"}


def run_load(args) -> dict:
  """The full form of the load and fault scenarios (tests/serving/test_serving_faults.py: short)."""
  import os

  from common.serving import faults as dl

  if min(args.load_streams, args.load_processes) < 1 or not (args.load_seconds > 0 and args.load_fps > 0):
    from common.errors import ConfigError

    raise ConfigError("--load-streams and --load-processes must be >= 1, --load-seconds and --load-fps > 0")
  repo, model = _load_model(args)
  work = Path(args.run_dir)
  fps, dl_s = args.load_fps, args.load_deadline
  out = {"repository": str(repo), "model": model, "uptime_before": os.getloadavg()}
  out["load"] = dl.run_load(
    repo,
    model,
    streams=args.load_streams,
    seconds=args.load_seconds,
    fps=fps,
    deadline_s=dl_s,
    processes=min(args.load_processes, args.load_streams),
    workdir=work,
  )
  out["restarts"] = _strip(
    dl.run_restarts(repo, model, fps=fps, deadline_s=dl_s, up_s=5.0, down_s=1.0, workdir=work)
  )
  out["outage"] = _strip(
    dl.run_outage(
      repo, model, seconds=15.0, fps=fps, deadline_s=dl_s, rate_bps=2e6, start_s=5.0, length_s=5.0
    )
  )
  out["garbage"] = dl.run_garbage(
    repo, model, streams=8, seconds=20.0, fps=fps, deadline_s=dl_s, workdir=work
  )
  out["uptime_after"] = os.getloadavg()
  return out


def run_deployment(args) -> dict:
  """The coinfer deploy step (pacer link) on the run, its summary.json."""
  from common import safeio
  from common.serving import runner

  config = safeio.load_json(Path(args.workdir) / "config.json", what="run config")
  settings = {**runner.config_section(controller="mpc").to_dict(), **config.get("deploy", {})}
  settings.update(link="pacer", trace=args.trace, trace_scale=args.trace_scale)
  settings.update(frames=args.frames, fps=args.fps, out=args.run_dir)
  runner.deploy(runner.deployment("coinfer"), settings, Path(args.workdir))
  return json.loads((Path(args.run_dir) / "summary.json").read_text())


def run(args) -> dict:
  if args.load:
    return run_load(args)
  if args.links:
    from launch.benchmarks import links

    return links.run(args)
  from coinfer import deploy as coinfer_deploy
  from common.serving import process

  workdir = Path(args.workdir)
  dep = coinfer_deploy.load(workdir)
  big = int(np.argmax([c * b for c, b in zip(dep.channels, dep.bits, strict=True)]))
  feeds = dep.encode(big, dep.images[0])
  proc, port = process.start_server(workdir / "exports" / "repository")
  try:
    load = [
      _load(
        f"127.0.0.1:{port}", workdir / "exports" / "repository", dep.models[big], feeds, int(n), args.seconds
      )
      for n in args.streams.split(",")
    ]
    floor = transport_floor(f"127.0.0.1:{port}", dep.models[big], feeds, "LOGITS", fps=args.fps)
  finally:
    process.stop_server(proc)
  summary = run_deployment(args)
  m, s = summary["measured"], summary["simulator"]
  import os

  return {
    "model": dep.models[big],
    "request_bytes": int(sum(np.asarray(v).nbytes for v in feeds.values())),
    "server_load": load,
    "deployment": {
      "frames": m["frames"],
      "trace": args.trace,
      "trace_scale": args.trace_scale,
      "overhead_p50_ms": m.get("overhead_p50_ms"),
      "overhead_p99_ms": m.get("overhead_p99_ms"),
      "transport_floor": floor,
      "miss_rate": m["deadline_miss_rate"],
      "sim_miss_rate": s["deadline_miss_rate"],
      "miss_rate_gap": abs(m["deadline_miss_rate"] - s["deadline_miss_rate"]),
      # over the frames answered (the device's are those answered in time: a late request is
      # cancelled at its deadline), as the links benchmark compares them
      "accuracy": m["accuracy"],
      "sim_accuracy": s.get("answered_accuracy", s["accuracy"]),
      "accuracy_gap": abs(m["accuracy"] - s.get("answered_accuracy", s["accuracy"])),
      "timely_accuracy_gap": abs(m["timely_accuracy"] - s["timely_accuracy"]),
      "report": str(Path(args.run_dir) / "report.md"),
    },
    "load_average": os.getloadavg(),
  }
