"""The serving runtime under load and faults: four scenarios on real server processes over loopback.

- `load`: N device streams (threads of P device processes, `python -m common.serving.load`)
  against one `python -m launch.serve`; answered requests per second, p50 / p99 latency, and
  every answer checked against the expected output of its own input.
- `restarts`: the server SIGKILLed and restarted on the same port `kills` times during a stream.
- `outage`: the pacer's link at zero rate for a while (a trace with a zero-rate segment).
- `garbage`: a device sending garbage of every kind to the server that healthy streams use.

Each returns a complete account of its frames (`common.serving.load.record` / `merge`): every
frame ok, late or lost, the reasons, wrong answers. `launch.bench deploy --load` runs the full
form; tests/serving/test_serving_faults.py a shortened one.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
import time
from pathlib import Path

import numpy as np

from common.serving import load, repository, wire
from launch.deploy import PY, _env, start_server, stop_server

WIRE_MODEL = "wire_decoder"


def wire_repository(repo: Path, shape=(8, 8, 32), bits: int = 8) -> str:
  """A repository with the ONNX wire decoder of a [1, *shape] split tensor at `bits` bits (the
  front half of every coinfer server model; 8x8x32 at 8 bits is the N32Q8 payload of the quick
  runs); returns the model's name."""
  repository.write_model(repo, WIRE_MODEL, wire.onnx_decoder(shape, bits, out_name="Z"))
  return WIRE_MODEL


def _server_stats(path: Path) -> dict:
  try:
    return json.loads(Path(path).read_text())
  except (OSError, ValueError):
    return {}


def run_load(
  repo: Path,
  model: str,
  *,
  streams: int,
  seconds: float,
  fps: float,
  deadline_s: float,
  processes: int,
  workdir: Path,
) -> dict:
  """`streams` streams split over `processes` device processes against one server process."""
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  stats = workdir / "load_server_stats.json"
  proc, port = start_server(repo, stats=stats, extra=["--workers", str(max(16, streams))])
  frames = int(round(seconds * fps))
  per = [streams // processes + (i < streams % processes) for i in range(processes)]
  workers, outs, first = [], [], 0
  load_before = os.getloadavg()
  try:
    t0 = time.monotonic()
    for i, n in enumerate(p for p in per if p):
      out = workdir / f"load_streams_{i}.json"
      out.unlink(missing_ok=True)
      cmd = [*PY, "-m", "common.serving.load", "--url", f"127.0.0.1:{port}", "--repository", str(repo)]
      cmd += ["--model", model, "--streams", str(n), "--first-stream", str(first), "--frames", str(frames)]
      cmd += [f"--fps={fps}", f"--deadline={deadline_s}", "--out", str(out)]
      workers.append(subprocess.Popen(cmd, env=_env(), stderr=subprocess.PIPE, text=True))
      outs.append(out)
      first += n
    errs = [w.communicate(timeout=seconds + 300)[1] for w in workers]
    wall = time.monotonic() - t0
  finally:
    for w in workers:
      if w.poll() is None:
        w.kill()
    stop_server(proc)
  bad = [(w.returncode, e.strip().splitlines()[-1:]) for w, e in zip(workers, errs, strict=True) if w.returncode]
  if bad:
    raise RuntimeError(f"device processes failed: {bad}")
  records = [r for o in outs for r in json.loads(o.read_text())]
  out = load.merge(records, seconds)
  out.update(
    processes=len(workers),
    fps_per_stream=fps,
    offered_per_s=streams * fps,
    deadline_s=deadline_s,
    wall_with_startup_s=wall,
    server=_server_stats(stats),
    load_average_before=load_before,
    load_average_after=os.getloadavg(),
  )
  return out


def _in_thread(fn, **kw):
  box: dict = {}

  def go():
    try:
      box["out"] = fn(**kw)
    except Exception as e:  # noqa: BLE001 - re-raised in the caller's thread
      box["error"] = e

  t = threading.Thread(target=go)
  t.start()
  return t, box


def _result(t, box):
  t.join()
  if "error" in box:
    raise box["error"]
  return box["out"]


def run_restarts(
  repo: Path,
  model: str,
  *,
  seconds: float,
  fps: float,
  deadline_s: float,
  kills: int = 2,
  up_s: float = 1.5,
  down_s: float = 0.5,
) -> dict:
  """A stream while the server is SIGKILLed and restarted (same port) `kills` times."""
  m = load._model(repo, model)
  inputs, expected = load.pool(m)
  proc, port = start_server(repo)
  events = []
  try:
    t0 = time.monotonic()
    t, box = _in_thread(
      load.stream,
      url=f"127.0.0.1:{port}",
      model=m,
      inputs=inputs,
      expected=expected,
      sid=0,
      frames=int(round(seconds * fps)),
      fps=fps,
      deadline_s=deadline_s,
    )
    for _ in range(kills):
      time.sleep(up_s)
      proc.kill()
      proc.wait()
      events.append(("killed", time.monotonic() - t0))
      time.sleep(down_s)
      proc, _ = start_server(repo, port=port)
      events.append(("serving again", time.monotonic() - t0))
    out = _result(t, box)
  finally:
    stop_server(proc)
  out["events"] = events
  # outages the stream came back from: a run of frames with a lost one, then an answered one
  out["recoveries"] = len(re.findall(r"[^o]*x[^o]*o", out["statuses"].lstrip("o")))
  return out


def outage_trace(rate_bps: float, start_s: float, length_s: float, seconds: float):
  from coinfer.traces import Trace

  times = np.asarray([0.0, start_s, start_s + length_s])
  rates = np.asarray([rate_bps, 0.0, rate_bps])
  return Trace("outage", times, rates, float(max(seconds, start_s + length_s) + 60.0))


def run_outage(
  repo: Path,
  model: str,
  *,
  seconds: float,
  fps: float,
  deadline_s: float,
  rate_bps: float,
  start_s: float,
  length_s: float,
) -> dict:
  """A stream over the pacer whose trace has zero rate in [start_s, start_s + length_s)."""
  from common.serving import link

  m = load._model(repo, model)
  inputs, expected = load.pool(m)
  trace = outage_trace(rate_bps, start_s, length_s, seconds)
  proc, port = start_server(repo)
  try:
    out = load.stream(
      f"127.0.0.1:{port}",
      m,
      inputs,
      expected,
      sid=0,
      frames=int(round(seconds * fps)),
      fps=fps,
      deadline_s=deadline_s,
      pacer=link.Pacer(trace),
    )
  finally:
    stop_server(proc)
  arrival = np.arange(out["frames"]) / fps
  # frames that cannot make it: they arrive in the outage and it outlasts their deadline
  doomed = (arrival >= start_s) & (arrival + deadline_s < start_s + length_s)
  missed = np.asarray([c != "o" for c in out["statuses"]])
  out.update(
    outage_s=[start_s, start_s + length_s],
    doomed=int(doomed.sum()),
    doomed_missed=int((doomed & missed).sum()),
    missed=int(missed.sum()),
  )
  return out


def run_garbage(
  repo: Path, model: str, *, streams: int, seconds: float, fps: float, deadline_s: float, workdir: Path
) -> dict:
  """Healthy streams and a garbage device on one server; the server must outlive it all."""
  stats = Path(workdir) / "garbage_server_stats.json"
  stats.parent.mkdir(parents=True, exist_ok=True)
  m = load._model(repo, model)
  inputs, _ = load.pool(m)
  proc, port = start_server(repo, stats=stats, extra=["--stats-every", "0.5"])
  url = f"127.0.0.1:{port}"
  stop = threading.Event()
  try:
    g, gbox = _in_thread(load.garbage, url=url, model=m, feeds=inputs[0], stop=stop)
    time.sleep(0.2)
    t0 = time.monotonic()
    records = load.run_streams(
      url, repo, model, streams=streams, frames=int(round(seconds * fps)), fps=fps, deadline_s=deadline_s
    )
    wall = time.monotonic() - t0
    stop.set()
    sent = _result(g, gbox)
    alive = proc.poll() is None
  finally:
    stop.set()
    stop_server(proc)
  out = load.merge(records, wall)
  out.update(
    garbage=sent,
    garbage_requests=sum(sum(v.values()) for v in sent.values()),
    server_alive=alive,
    healthy_errors=sum(sum(r["reasons"].values()) for r in records),
    server=_server_stats(stats),
  )
  return out
