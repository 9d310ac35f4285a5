"""The deploy and device steps of every technique: one runner for any `Deployment` and any `Link`.

  edgeinfer <technique> deploy --config=<pkg>/configs/<file>.py --workdir=RUN [--config.deploy.link=tc ...]
  edgeinfer <technique> device --config=... --workdir=RUN --config.deploy.server=HOST:PORT

`deploy` checks the run's model repository, sets up the link's network (`common.serving.link`),
starts the server process on it, runs the device in its own process (inside the device's
namespace for `tc`) and stops the server; then the technique's simulator predicts the same
stream and the technique writes RUN/deploy/report.md beside summary.json. `device` streams
against a server that is already running. A technique plugs in with one `Deployment` (its
`<pkg>/deploy.py` offers `DEPLOYMENT`) and a `deploy` section in its configs (`config_section`).

A fleet: a Deployment whose `fleet(workdir, settings, out_dir)` returns a `Fleet` gets one device
process per entry of `Fleet.devices` (each with those settings, the same device code) against one
server started with `Fleet.server_flags`. The processes meet at named barriers (`sync`): the
runner answers a barrier once every device process still running has reached it, with a common
start time on the machine's monotonic clock. A device process that dies leaves `{"failed":
reason}` in its place in the record `{"devices": [...]}`; the others go on.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple, Protocol

from common.errors import ConfigError

DEVICE_MODULE = "common.serving.runner"  # `python -m common.serving.runner SPEC.json`: the device process


class Deployment(Protocol):
  """What a technique supplies to the runner (settings: the config's `deploy` section as a dict)."""

  technique: str

  def prepare(self, workdir: Path, settings: dict) -> dict:
    """Writes what the server needs into RUN/exports/repository; returns export facts for the report."""

  def device(self, workdir: Path, settings: dict, client, link, progress) -> dict:
    """The device's stream against `client` over `link` (in the device process): its record."""

  def predict(self, workdir: Path, settings: dict, record: dict, trace) -> dict:
    """The simulator's (or the run's own) prediction of the same stream."""

  def summary(self, record: dict, prediction: dict, info: dict) -> dict:
    """summary.json: the measured figures beside the predicted ones."""

  def report(self, out_dir: Path, record: dict, prediction: dict, trace, server_stats, info: dict) -> Path:
    """out_dir/report.md and its plots."""

  def figures(self, record: dict, prediction: dict) -> dict:
    """The headline figures the step prints (scalars)."""


class Fleet(NamedTuple):
  """Several device processes against one server (`Deployment.fleet`, optional)."""

  devices: list  # each device process's settings (the deploy section and what the technique adds)
  server_flags: list  # further flags of the server (e.g. `--switch=MODEL=q,p,m,slot_ms`)


SYNC_LEAD_S = 0.3  # a barrier's start time is this long after the last device process reached it


def config_section(**overrides):
  """The `deploy` section of a technique's config: the stream, the trace, the link, the server.

  fps and deadline are typed placeholders (None: the technique's own stream settings)."""
  import ml_collections
  from ml_collections.config_dict import placeholder

  d = ml_collections.ConfigDict()
  d.trace = "markov"  # markov | random_walk | step | a Mahimahi (.up/.down) or CSV file
  d.trace_seed = 0
  d.trace_scale = 1.0  # the trace's bandwidth times this
  d.trace_start = 0.0  # seconds into the trace where the stream starts
  d.link = "pacer"  # pacer | tc | none
  d.delay_ms = 0.0  # tc: added propagation delay
  d.capture = False  # tc: every packet of the device's side to packets.jsonl (common.serving.capture)
  d.frames = 300
  d.fps = placeholder(float)
  d.deadline = placeholder(float)  # seconds
  d.int8 = True  # the int8 device parts where exported
  d.server = ""  # device step: HOST:PORT of a running server
  d.connect_timeout = 10.0
  d.out = ""  # report folder (default RUN/deploy)
  for k, v in overrides.items():
    d[k] = v
  return d


def validate(config) -> None:
  """The `deploy` section's keys and ranges, and its trace read (a bad trace file fails here)."""
  from common import config as cfg
  from common.serving import link

  if "deploy" not in config:
    return
  for key, lo in (("trace_scale", 0), ("fps", 0), ("deadline", 0), ("connect_timeout", 0)):
    if cfg.get(config, f"deploy.{key}") is not None:
      cfg.check_range(config, f"deploy.{key}", lo, lo_open=True)
  for key in ("trace_start", "delay_ms"):
    cfg.check_range(config, f"deploy.{key}", 0)
  cfg.check_range(config, "deploy.frames", 1, 10**7, integer=True)
  cfg.check_range(config, "deploy.trace_seed", 0, cfg.SEED_MAX, integer=True)
  cfg.check_choice(config, "deploy.link", tuple(link.LINKS))
  if config.deploy.get("capture") and config.deploy.link != "tc":
    raise ConfigError(f"config.deploy.capture needs config.deploy.link = 'tc', not {config.deploy.link!r}")
  server = config.deploy.server
  host, _, port = server.rpartition(":")
  if server and not (host and port.isdigit() and 0 < int(port) < 65536):
    raise ConfigError(f"config.deploy.server = {server!r}: must be HOST:PORT (e.g. 127.0.0.1:8001)")
  load_trace(config.deploy.to_dict())


def load_trace(settings: dict):
  """The stream's trace: `settings["trace"]` (synthetic kind or file), scaled and started at
  `trace_start` seconds, long enough for the stream."""
  from common import traces

  fps = settings.get("fps") or 10.0
  seconds = max(30.0, settings["frames"] / fps + 5.0)
  tr = traces.load(settings["trace"], seed=settings["trace_seed"], seconds=seconds + settings["trace_start"])
  return traces.shifted(tr, start_s=settings["trace_start"], scale=settings["trace_scale"])


@contextlib.contextmanager
def _sigterm_unwinds():
  """SIGTERM raises SystemExit, so the finally blocks stop the server and remove the namespaces."""
  previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
  try:
    yield
  finally:
    signal.signal(signal.SIGTERM, previous)


def _run_processes(dep: Deployment, workdir: Path, settings: dict, trace, paths: dict, fleet=None):
  """The server and the device process(es) over the link's network; a fleet's record (else None)."""
  from common.serving import link as link_lib
  from common.serving import process

  capture = str(paths["device"].parent / "packets.jsonl") if settings.get("capture") else ""
  link = link_lib.make(settings["link"], trace, delay_ms=settings["delay_ms"], capture=capture)
  with _sigterm_unwinds(), link.network() as net:
    server, port = process.start_server(
      paths["repo"],
      host=net.server_host,
      port=net.server_port,
      prefix=net.server_prefix,
      stats=paths["stats"],
      extra=fleet.server_flags if fleet else (),
    )
    try:
      spec = {"technique": dep.technique, "module": type(dep).__module__, "workdir": str(workdir)}
      spec.update(settings=settings, server=net.device_address or f"{net.server_host}:{port}", link=net.spec)
      if fleet is not None:
        return run_fleet(spec, fleet.devices, paths["device"].parent, prefix=net.device_prefix)
      spec["out"] = str(paths["device"])
      paths["spec"].write_text(json.dumps(spec, indent=1))
      process.run_python(DEVICE_MODULE, [str(paths["spec"])], prefix=net.device_prefix)
      return None
    finally:
      process.stop_server(server)


def run_fleet(spec: dict, devices: list, out_dir: Path, *, prefix=(), timeout_s: float = 3600.0) -> dict:
  """One device process per settings of `devices` (spec: technique, workdir, server, link), run to
  the end while answering their barriers; {"devices": [record or {"failed": reason}, ...]}."""
  from common.serving import process

  sync_dir = out_dir / "fleet"
  sync_dir.mkdir(parents=True, exist_ok=True)
  for f in sync_dir.iterdir():
    f.unlink()
  procs, logs, outs = [], [], []
  try:
    for i, s in enumerate(devices):
      outs.append(out_dir / f"device_{i}.json")
      outs[-1].unlink(missing_ok=True)
      one = {**spec, "settings": {**s, "fleet": {"index": i, "size": len(devices), "dir": str(sync_dir)}}}
      one["out"] = str(outs[-1])
      (out_dir / f"device_spec_{i}.json").write_text(json.dumps(one, indent=1))
      logs.append(open(out_dir / f"device_{i}.log", "w"))  # noqa: SIM115 - closed below
      cmd = [*prefix, *process.PY, "-m", DEVICE_MODULE, str(out_dir / f"device_spec_{i}.json")]
      procs.append(subprocess.Popen(cmd, stdout=logs[-1], stderr=subprocess.STDOUT, env=process.child_env()))
    _coordinate(procs, sync_dir, timeout_s)
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
    for f in logs:
      f.close()
  return {"devices": [_device_record(p, out, out_dir / f"device_{i}.log") for i, (p, out) in
                      enumerate(zip(procs, outs, strict=True))]}  # fmt: skip


def _device_record(proc, out: Path, log: Path) -> dict:
  from common import safeio

  if proc.returncode == 0 and out.exists():
    return safeio.load_json(out, what="device record", keys=("summary",))
  lines = [x for x in log.read_text(errors="replace").splitlines() if x.strip()] if log.exists() else []
  why = f"exit status {proc.returncode}" + (f": {lines[-1][:200]}" if lines else "")
  return {"failed": why}


def _coordinate(procs: list, sync_dir: Path, timeout_s: float) -> None:
  """Until every process ends: a barrier `name` is answered (`name.go`, a start time on the
  monotonic clock) once every process still running has written its `name.INDEX.ready`."""
  from common.errors import ServingError

  answered: set[str] = set()
  t_end = time.monotonic() + timeout_s
  while any(p.poll() is None for p in procs):
    if time.monotonic() > t_end:
      raise ServingError(f"the fleet's device processes did not finish within {timeout_s:.0f} s")
    alive = {i for i, p in enumerate(procs) if p.poll() is None}
    ready: dict[str, set[int]] = {}
    for f in sync_dir.glob("*.ready"):
      name, _, idx = f.name[: -len(".ready")].rpartition(".")
      ready.setdefault(name, set()).add(int(idx))
    for name, who in ready.items():
      if name not in answered and alive <= who:
        _write_atomic(sync_dir / f"{name}.go", repr(time.monotonic() + SYNC_LEAD_S))
        answered.add(name)
    time.sleep(0.01)


def _write_atomic(path: Path, text: str) -> None:
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text(text)
  os.replace(tmp, path)


def sync(settings: dict, name: str, timeout_s: float = 600.0) -> float | None:
  """A fleet's device process at barrier `name`: waits until the runner answers it and returns the
  common start time (`time.monotonic()` seconds); None outside a fleet."""
  from common.errors import ServingError

  fl = settings.get("fleet")
  if not fl:
    return None
  d = Path(fl["dir"])
  _write_atomic(d / f"{name}.{fl['index']}.ready", str(os.getpid()))
  go, t_end = d / f"{name}.go", time.monotonic() + timeout_s
  while not go.exists():
    if time.monotonic() > t_end:
      raise ServingError(f"the fleet's barrier {name!r} was not answered within {timeout_s:.0f} s")
    time.sleep(0.005)
  return float(go.read_text())


def deploy(dep: Deployment, settings: dict, workdir: str | Path) -> dict:
  """The deploy step: repository, server, device, link; then prediction, summary.json and report."""
  from common import safeio
  from common.report import write_json
  from common.serving import repository

  workdir = Path(workdir)
  if settings["link"] == "tc":
    from common.serving import link

    link.require_tc()
  trace = load_trace(settings)  # a malformed trace fails here, before anything starts
  info = dep.prepare(workdir, settings)
  repo = workdir / "exports" / "repository"
  repository.load_repository(repo)  # missing or partial: one line, before any process starts
  out_dir = Path(settings["out"]) if settings["out"] else workdir / "deploy"
  out_dir.mkdir(parents=True, exist_ok=True)
  paths = {"repo": repo, "stats": out_dir / "server_stats.json", "device": out_dir / "device.json"}
  paths["spec"] = out_dir / "device_spec.json"
  for f in (paths["stats"], paths["device"]):
    f.unlink(missing_ok=True)
  fleet = dep.fleet(workdir, settings, out_dir) if hasattr(dep, "fleet") else None
  record = _run_processes(dep, workdir, settings, trace, paths, fleet)
  if record is None:
    record = safeio.load_json(paths["device"], what="device record", keys=("summary",))
  server_stats = safeio.load_json_if_present(paths["stats"], what="server statistics")
  pred = dep.predict(workdir, settings, record, trace)
  write_json(out_dir / "summary.json", dep.summary(record, pred, info))
  path = dep.report(out_dir, record, pred, trace, server_stats, info)
  return {"report": str(path), **dep.figures(record, pred)}


def stream_device(dep: Deployment, workdir: Path, settings: dict, server: str, link_spec: dict) -> dict:
  """The device's side: connect, stream over the link (rebuilt from its spec), return the record."""
  from common.serving import device as dev
  from common.serving import link as link_lib

  link = link_lib.from_spec(link_spec, load_trace(settings))
  client = dev.Client(server)

  def progress(k: int) -> None:
    if k == 0:
      print("stream started", flush=True)

  try:
    client.connect(settings["connect_timeout"])
    record = dep.device(Path(workdir), settings, client, link, progress)
  finally:
    client.close()
  if link.changes:
    record["tc_rate_changes"] = link.changes
  if link.t0 is not None:  # the stream's start on the monotonic clock (a packet capture's clock)
    record["t0_monotonic"] = link.t0
  return record


def device(dep: Deployment, settings: dict, workdir: str | Path) -> dict:
  """The device step: stream against the running server `settings["server"]`; RUN/deploy/device.json."""
  from common.report import write_json

  if not settings["server"]:
    raise ConfigError("the device step needs --config.deploy.server=HOST:PORT (a running `edgeinfer serve`)")
  if settings["link"] == "tc":
    raise ConfigError(
      "config.deploy.link = 'tc' needs the deploy step's namespaces; the device step takes 'pacer' or 'none'"
    )
  record = stream_device(dep, Path(workdir), settings, settings["server"], {"kind": settings["link"]})
  out = Path(settings["out"]) if settings["out"] else Path(workdir) / "deploy"
  write_json(out / "device.json", record)
  return {"device_record": str(out / "device.json"), **scalars(record.get("summary", {}))}


def scalars(d: dict) -> dict:
  return {k: v for k, v in d.items() if isinstance(v, int | float | str | bool)}


def app_steps(technique: str, config_of) -> dict:
  """The `deploy` and `device` steps of a technique's app (`common.app.Step`s); `config_of(run)` is
  the config in the package's run context, whose `workdir` is the run's."""
  from common import app

  def step(fn):
    return lambda run: fn(deployment(technique), config_of(run).deploy.to_dict(), run.workdir)

  return {
    "deploy": app.Step(
      step(deploy),
      "the exports as a system: server, device and link (config.deploy); deploy/report.md",
      saves_config=False,
    ),
    "device": app.Step(
      step(device),
      "stream against a running server (config.deploy.server); deploy/device.json",
      saves_config=False,
    ),
  }


def deployment(technique: str) -> Deployment:
  """The `DEPLOYMENT` of `<technique>.deploy`."""
  return importlib.import_module(f"{technique}.deploy").DEPLOYMENT


def main(argv: list[str]) -> int:
  """The device process: `python -m common.serving.runner SPEC.json` (written by `deploy`)."""
  from common.report import write_json

  spec = json.loads(Path(argv[1]).read_text())
  dep = (
    importlib.import_module(spec["module"]).DEPLOYMENT
    if spec.get("module")
    else deployment(spec["technique"])
  )
  record = stream_device(dep, Path(spec["workdir"]), spec["settings"], spec["server"], spec["link"])
  write_json(spec["out"], record)
  print(json.dumps(scalars(record.get("summary", {}))), flush=True)
  return 0


if __name__ == "__main__":
  from common.cli import run_main

  run_main(lambda: main(sys.argv))
