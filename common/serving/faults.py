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
from common.serving.process import PY, child_env, start_server, stop_server

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
  proc, port = start_server(repo, stats=stats, extra=[f"--workers={max(16, streams)}"])
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
      workers.append(subprocess.Popen(cmd, env=child_env(), stderr=subprocess.PIPE, text=True))
      outs.append(out)
      first += n
    errs = [w.communicate(timeout=seconds + 300)[1] for w in workers]
    wall = time.monotonic() - t0
  finally:
    for w in workers:
      if w.poll() is None:
        w.kill()
    stop_server(proc)
  bad = [
    (w.returncode, e.strip().splitlines()[-1:]) for w, e in zip(workers, errs, strict=True) if w.returncode
  ]
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


def _wait_answered(stats: Path, n: int, proc, timeout_s: float = 60.0) -> None:
  """Until the server (writing `stats` every 0.2 s) has answered n requests."""
  t_end = time.monotonic() + timeout_s
  while time.monotonic() < t_end and proc.poll() is None:
    s = _server_stats(stats)
    if s.get("requests", 0) - s.get("failed", 0) >= n:
      return
    time.sleep(0.1)
  raise RuntimeError(f"the server answered fewer than {n} requests within {timeout_s:.0f} s")


def run_restarts(
  repo: Path,
  model: str,
  *,
  fps: float,
  deadline_s: float,
  kills: int = 2,
  up_s: float = 1.5,
  down_s: float = 0.5,
  workdir: Path,
  max_seconds: float = 300.0,
) -> dict:
  """A stream while the server is SIGKILLed and restarted (same port) `kills` times: each kill
  `up_s` after the server (re)started answering the stream, each restart `down_s` after the
  kill; the stream stops `up_s` after the last restart answered."""
  m = load.served_model(repo, model)
  inputs, expected = load.pool(m)
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  extra = ["--stats_every=0.2"]
  stats = [workdir / f"restart_stats_{i}.json" for i in range(kills + 1)]
  for f in stats:
    f.unlink(missing_ok=True)
  proc, port = start_server(repo, stats=stats[0], extra=extra)
  events, stop = [], threading.Event()
  try:
    t0 = time.monotonic()
    t, box = _in_thread(
      load.stream,
      url=f"127.0.0.1:{port}",
      model=m,
      inputs=inputs,
      expected=expected,
      sid=0,
      frames=int(round(max_seconds * fps)),
      fps=fps,
      deadline_s=deadline_s,
      stop=stop,
    )
    for i in range(kills):
      _wait_answered(stats[i], 5, proc)
      time.sleep(up_s)
      proc.kill()
      proc.wait()
      events.append(("killed", time.monotonic() - t0))
      time.sleep(down_s)
      proc, _ = start_server(repo, port=port, stats=stats[i + 1], extra=extra)
      events.append(("serving again", time.monotonic() - t0))
    _wait_answered(stats[kills], 5, proc)
    time.sleep(up_s)
    stop.set()
    out = _result(t, box)
  finally:
    stop.set()
    stop_server(proc)
  out["events"] = events
  # outages the stream came back from: a run of frames with a lost one, then an answered one
  out["recoveries"] = len(re.findall(r"[^o]*x[^o]*o", out["statuses"].lstrip("o")))
  return out


def outage_trace(rate_bps: float, start_s: float, length_s: float, seconds: float):
  from common.traces import Trace

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

  m = load.served_model(repo, model)
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
      link=link.PacerLink(trace),
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
  """Healthy streams (threads of this process) and a garbage device (its own process) on one
  server; the server must outlive it all and the healthy streams see no error."""
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  stats, sent = workdir / "garbage_server_stats.json", workdir / "garbage_sent.json"
  sent.unlink(missing_ok=True)
  proc, port = start_server(repo, stats=stats, extra=["--stats_every=0.5"])
  url = f"127.0.0.1:{port}"
  cmd = [*PY, "-m", "common.serving.load", "--url", url, "--repository", str(repo), "--model", model]
  cmd += ["--garbage", str(seconds + 1.0), "--out", str(sent)]
  bad = subprocess.Popen(cmd, env=child_env(), stderr=subprocess.PIPE, text=True)
  try:
    while not sent.exists() and bad.poll() is None and not _garbage_started(stats):
      time.sleep(0.1)
    t0 = time.monotonic()
    records = load.run_streams(
      url, repo, model, streams=streams, frames=int(round(seconds * fps)), fps=fps, deadline_s=deadline_s
    )
    wall = time.monotonic() - t0
    err = bad.communicate(timeout=seconds + 60)[1]
    alive = proc.poll() is None
  finally:
    if bad.poll() is None:
      bad.kill()
    stop_server(proc)
  if bad.returncode:
    raise RuntimeError(f"the garbage device failed: {err.strip().splitlines()[-1:]}")
  got = json.loads(sent.read_text())
  out = load.merge(records, wall)
  out.update(
    garbage=got,
    garbage_requests=sum(sum(v.values()) for v in got.values()),
    server_alive=alive,
    healthy_errors=sum(sum(r["reasons"].values()) for r in records),
    server=_server_stats(stats),
  )
  return out


def _garbage_started(stats: Path) -> bool:
  """True once the server has refused a request (the garbage device is at work)."""
  return _server_stats(stats).get("failed", 0) > 0


# ---------------------------------------------------------------- faults of a fleet


class FleetProbe:
  """A technique-neutral `common.serving.runner.Deployment` for the fleet's faults: each device
  process (`python -m common.serving.runner`, one per camera) streams the repository's model
  (`load.stream`: inputs of `load.pool`, every answer checked) from the fleet's common start."""

  technique = "probe"

  def device(self, workdir: Path, settings: dict, client, link, progress) -> dict:
    from common.serving import runner

    m = load.served_model(settings["repository"], settings["model"])
    inputs, expected = load.pool(m)
    go = runner.sync(settings, "stream")
    while go is not None and time.monotonic() < go:
      time.sleep(0.001)
    rec = load.stream(client.url, m, inputs, expected, sid=settings["camera"], frames=settings["frames"],
                      fps=settings["fps"], deadline_s=settings["deadline"], link=link)  # fmt: skip
    return {"summary": {"status": rec["status"]}, **rec}


DEPLOYMENT = FleetProbe()


def run_fleet(repo: Path, model: str, devices: list[dict], *, workdir: Path, switch: str = "",
              kill: int | None = None, kill_after_s: float = 1.0, restart_after_s: float | None = None,
              down_s: float = 0.5) -> dict:  # fmt: skip
  """The devices as a fleet (`runner.run_fleet`) against one server (with `--switch=switch`), while
  camera `kill` is SIGKILLed `kill_after_s` into the stream and/or the server is SIGKILLed
  `restart_after_s` into it and restarted on the same port `down_s` later. Every frame of every
  camera is accounted for: a dead camera's are counted lost (its record went with it)."""
  from common.serving import runner

  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  extra = [f"--switch={switch}"] if switch else []
  proc, port = start_server(repo, extra=extra)
  spec = {"technique": "probe", "module": __name__, "workdir": str(workdir), "server": f"127.0.0.1:{port}"}
  spec["link"] = {"kind": devices[0]["link"]}
  events: list = []
  try:
    t, box = _in_thread(runner.run_fleet, spec=spec, devices=devices, out_dir=workdir, timeout_s=300.0)
    go = _wait_go(workdir / "fleet" / "stream.go", t)
    if go is not None:
      proc = _inject(
        proc, repo, port, extra, go, workdir, kill, kill_after_s, restart_after_s, down_s, events
      )
    rec = _result(t, box)
  finally:
    stop_server(proc)
  return _fleet_account(rec, devices, events)


def _wait_go(path: Path, thread, timeout_s: float = 120.0) -> float | None:
  t_end = time.monotonic() + timeout_s
  while not path.exists():
    if not thread.is_alive() or time.monotonic() > t_end:
      return None
    time.sleep(0.01)
  return float(path.read_text())


def _inject(proc, repo, port, extra, go, workdir, kill, kill_after_s, restart_after_s, down_s, events):
  """The faults, at their times after the stream's start `go`; returns the server process serving."""
  plan = sorted([(kill_after_s, "kill")] * (kill is not None) + [(restart_after_s, "restart")] *
                (restart_after_s is not None))  # fmt: skip
  for at, what in plan:
    time.sleep(max(go + at - time.monotonic(), 0.0))
    if what == "kill":
      pid = int((workdir / "fleet" / f"stream.{kill}.ready").read_text())
      os.kill(pid, 9)
      events.append(("camera killed", kill, time.monotonic() - go))
    else:
      proc.kill()
      proc.wait()
      events.append(("server killed", None, time.monotonic() - go))
      time.sleep(down_s)
      proc, _ = start_server(repo, port=port, extra=extra)
      events.append(("serving again", None, time.monotonic() - go))
  return proc


def _fleet_account(rec: dict, devices: list[dict], events: list) -> dict:
  cams = []
  for s, d in zip(devices, rec["devices"], strict=True):
    if "failed" in d:
      cams.append({"camera": s["camera"], "failed": d["failed"], "frames": s["frames"],
                   "status": {"ok": 0, "late": 0, "lost": s["frames"], "refused": 0}, "statuses": "x" * s["frames"]})  # fmt: skip
    else:
      cams.append({"camera": s["camera"], **{k: d[k] for k in ("frames", "status", "statuses", "wrong",
                                                                   "unaccounted", "reasons", "reconnects")}})  # fmt: skip
  status = {k: sum(c["status"][k] for c in cams) for k in ("ok", "late", "lost", "refused")}
  return {
    "cameras": cams,
    "frames": sum(c["frames"] for c in cams),
    "status": status,
    "failed": [c["camera"] for c in cams if "failed" in c],
    "wrong": sum(c.get("wrong", 0) for c in cams),
    "unaccounted": sum(c.get("unaccounted", 0) for c in cams),
    "events": events,
  }
