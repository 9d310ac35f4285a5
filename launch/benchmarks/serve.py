"""serve benchmark: requests per second of edgeinfer's server over gRPC and over HTTP, beside a
stock Triton server (nvidia-pytriton's tritonserver, `common.serving.triton`), on the same model,
machine and run.

  python -m launch.bench serve [--workdir runs/quickstart/coinfer --seconds 3 --streams 1,4,16 \
      --repeats 1 --triton_python .venv-triton/bin/python]

The model is the largest of --workdir's repository (a coinfer run's largest server model) when
there is one, else the ONNX wire decoder of the quick runs' N32Q8 payload. Both servers run
throughout and take turns point by point (a machine whose load moves during the run moves them
alike). Each point is --seconds of `streams` threads of this process, each with its own
tritonclient (gRPC, or HTTP with binary tensors) issuing the same request back to back; each
stream's warm-up answer is checked against onnxruntime's output for the input. Client and
servers share the machine's cores, so the figures are of the whole loop on one machine, not of
a server alone. Without an interpreter with nvidia-pytriton (--triton_python,
EDGEINFER_TRITON_PYTHON, or .venv-triton/bin/python) the result says why Triton is missing.
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from pathlib import Path

import numpy as np


def add_args(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--workdir", default="runs/quickstart/coinfer", help="a coinfer run with exports")
  parser.add_argument("--seconds", type=float, default=3.0, help="per point")
  parser.add_argument("--streams", default="1,4,16", help="concurrent streams per point")
  parser.add_argument("--repeats", type=int, default=1, help="rounds of every point; rows keep the median")
  parser.add_argument("--triton_python", default=None, help="an interpreter with nvidia-pytriton")
  parser.add_argument("--out_dir", default="runs/bench/serve", help="where the wire-decoder repository goes")


def throughput(make_call, streams: int, seconds: float) -> dict:
  """`streams` threads, each calling its own `make_call()()` back to back for `seconds` after a
  common start; requests per second, p50 / p99 latency (ms) and errors."""
  lat: list[list[float]] = [[] for _ in range(streams)]
  errors, first_error = [0] * streams, []
  start, stop_at = threading.Barrier(streams + 1), [float("inf")]

  def worker(i):
    call = make_call()  # connects and warms up
    start.wait()
    while time.perf_counter() < stop_at[0]:
      t = time.perf_counter()
      try:
        call()
      except Exception as e:  # noqa: BLE001 - counted (the first one kept), the load goes on
        errors[i] += 1
        first_error[:] = first_error or [f"{type(e).__name__}: {e}"]
        continue
      lat[i].append(time.perf_counter() - t)

  threads = [threading.Thread(target=worker, args=(i,)) for i in range(streams)]
  for t in threads:
    t.start()
  start.wait()
  t0 = time.perf_counter()
  stop_at[0] = t0 + seconds
  for t in threads:
    t.join()
  wall = time.perf_counter() - t0
  every = np.concatenate([np.asarray(x) for x in lat]) * 1e3
  out = {
    "streams": streams,
    "requests": int(every.size),
    "errors": int(sum(errors)),
    "first_error": first_error,
  }
  out["requests_per_s"] = float(every.size / wall)
  if every.size:
    out.update(p50_ms=float(np.percentile(every, 50)), p99_ms=float(np.percentile(every, 99)))
  return out


def client_call(protocol: str, url: str, model, feeds: dict, expected: np.ndarray):
  """A factory of one stream's call: its own client, a checked warm-up answer, then `infer`."""
  import tritonclient.grpc as tg
  import tritonclient.http as th

  from common.serving import repository

  lib = tg if protocol == "grpc" else th
  output = model.outputs[0].name

  def make():
    c = (
      lib.InferenceServerClient(url)
      if protocol == "grpc"
      else lib.InferenceServerClient(url, network_timeout=10.0)
    )
    inputs = []
    for s in model.inputs:
      t = lib.InferInput(s.name, list(s.shape), s.datatype)
      t.set_data_from_numpy(np.ascontiguousarray(feeds[s.name], repository.NUMPY[s.datatype]))
      inputs.append(t)
    outputs = [lib.InferRequestedOutput(output)]
    got = c.infer(model.name, inputs, outputs=outputs).as_numpy(output)
    if not np.array_equal(got, expected):
      raise RuntimeError(f"{url} ({protocol}) answered {model.name} with another output than onnxruntime's")
    timeout = {"client_timeout": 10.0} if protocol == "grpc" else {}  # HTTP: network_timeout above
    return lambda: c.infer(model.name, inputs, outputs=outputs, **timeout)

  return make


def pick_model(workdir: Path, out_dir: Path):
  """(repository, Model): the largest model of the run's repository, else the wire decoder."""
  from common.serving import faults, repository

  repo = workdir / "exports" / "repository"
  if not repo.is_dir():
    repo = out_dir / "wire_repository"
    faults.wire_repository(repo)
  newest = [max(v.values(), key=lambda m: int(m.version)) for v in repository.load_repository(repo).values()]
  return repo, max(newest, key=lambda m: sum(s.nbytes for s in m.inputs))


def triton_python(arg: str | None) -> str | None:
  from common.serving.process import ROOT

  path = arg or os.environ.get("EDGEINFER_TRITON_PYTHON") or str(ROOT / ".venv-triton" / "bin" / "python")
  return path if Path(path).exists() else None


def points(servers: dict, model, feeds, expected, args) -> list[dict]:
  """Every (protocol, streams) point of every server, the servers taking turns point by point
  (so that a machine whose load moves during the run moves every server's figures alike),
  --repeats times; each row holds the median requests per second over its repeats."""
  runs: dict = {}
  for _ in range(args.repeats):
    for protocol in ("grpc", "http"):
      for n in (int(x) for x in args.streams.split(",")):
        for name, (port, http_port) in servers.items():
          url = f"127.0.0.1:{port if protocol == 'grpc' else http_port}"
          r = throughput(client_call(protocol, url, model, feeds, expected), n, args.seconds)
          runs.setdefault((name, protocol, n), []).append(r)
          print(f"{name} {protocol} {n} streams: {r['requests_per_s']:.0f} requests/s", flush=True)
  rows = []
  for (name, protocol, _), rs in sorted(runs.items()):
    mid = sorted(rs, key=lambda r: r["requests_per_s"])[len(rs) // 2]
    rows.append(
      {"server": name, "protocol": protocol, **mid, "requests_per_s_runs": [r["requests_per_s"] for r in rs]}
    )
  return rows


def run(args) -> dict:
  from common.serving import load, process

  if args.seconds <= 0 or args.repeats < 1:
    from common.errors import ConfigError

    raise ConfigError(f"--seconds {args.seconds} must be > 0 and --repeats {args.repeats} >= 1")
  repo, model = pick_model(Path(args.workdir), Path(args.out_dir))
  inputs, expected = load.pool(model, 1)
  out = {"repository": str(repo), "model": model.name, "request_bytes": sum(s.nbytes for s in model.inputs)}
  python = triton_python(args.triton_python)
  procs, servers = [], {}
  try:
    proc, port = process.start_server(repo, http_port=0)
    procs.append(proc)
    servers["edgeinfer"] = (port, proc.http_port)
    if python is None:
      out["triton"] = (
        "not run: no interpreter with nvidia-pytriton (requirements-triton.txt, --triton_python)"
      )
    else:
      proc, port = process.start_triton(repo, python=python)
      procs.append(proc)
      servers["triton"] = (port, proc.http_port)
    out["load_average_before"] = os.getloadavg()
    out["points"] = points(servers, model, inputs[0], expected[0], args)
    out["load_average_after"] = os.getloadavg()
  finally:
    for proc in procs:
      process.stop_server(proc)
  return out
