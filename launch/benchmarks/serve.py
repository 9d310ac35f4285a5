"""serve benchmark: requests per second of edgeinfer's server over gRPC and over HTTP, beside a
stock Triton server (nvidia-pytriton's tritonserver, `common.serving.triton`), on the same model,
machine and run.

  python -m launch.bench serve [--workdir runs/quickstart/coinfer --seconds 3 --streams 1,4,16 \
      --triton_python .venv-triton/bin/python]

The model is the largest of --workdir's repository (a coinfer run's N32Q8 server model) when
there is one, else the ONNX wire decoder of the quick runs' N32Q8 payload. Each point is
--seconds of `streams` threads of this process, each with its own tritonclient (gRPC or HTTP
with binary tensors) issuing the same request back to back; every answer of the warm-up call is
checked against onnxruntime's output for the input. Client and servers share the machine's
cores, so the figures are of the whole loop on one machine, not of a server alone. Without an
interpreter with nvidia-pytriton (--triton_python, EDGEINFER_TRITON_PYTHON, or
.venv-triton/bin/python), the Triton rows say why they are missing.
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
  parser.add_argument("--triton_python", default=None, help="an interpreter with nvidia-pytriton")
  parser.add_argument("--out_dir", default="runs/bench/serve", help="where the wire-decoder repository goes")


def throughput(make_call, streams: int, seconds: float) -> dict:
  """`streams` threads, each calling its own `make_call()()` back to back for `seconds` after a
  common start; requests per second, p50 / p99 latency (ms) and errors."""
  lat: list[list[float]] = [[] for _ in range(streams)]
  errors = [0] * streams
  start, stop_at = threading.Barrier(streams + 1), [float("inf")]

  def worker(i):
    call = make_call()  # connects and warms up
    start.wait()
    while time.perf_counter() < stop_at[0]:
      t = time.perf_counter()
      try:
        call()
      except Exception:  # noqa: BLE001 - counted, the load goes on
        errors[i] += 1
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
  out = {"streams": streams, "requests": int(every.size), "errors": int(sum(errors))}
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
    c = lib.InferenceServerClient(url)
    inputs = []
    for s in model.inputs:
      t = lib.InferInput(s.name, list(s.shape), s.datatype)
      t.set_data_from_numpy(np.ascontiguousarray(feeds[s.name], repository.NUMPY[s.datatype]))
      inputs.append(t)
    outputs = [lib.InferRequestedOutput(output)]
    got = c.infer(model.name, inputs, outputs=outputs).as_numpy(output)
    if not np.array_equal(got, expected):
      raise RuntimeError(f"{url} ({protocol}) answered {model.name} with another output than onnxruntime's")
    return lambda: c.infer(model.name, inputs, outputs=outputs, client_timeout=10.0)

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


def _server_rows(name: str, proc, port: int, model, feeds, expected, args) -> list[dict]:
  rows = []
  for protocol, p in (("grpc", port), ("http", proc.http_port)):
    make = client_call(protocol, f"127.0.0.1:{p}", model, feeds, expected)
    for n in (int(x) for x in args.streams.split(",")):
      rows.append({"server": name, "protocol": protocol, **throughput(make, n, args.seconds)})
      print(f"{name} {protocol} {n} streams: {rows[-1]['requests_per_s']:.0f} requests/s", flush=True)
  return rows


def run(args) -> dict:
  from common.serving import load, process

  repo, model = pick_model(Path(args.workdir), Path(args.out_dir))
  inputs, expected = load.pool(model, 1)
  out = {"repository": str(repo), "model": model.name, "request_bytes": sum(s.nbytes for s in model.inputs)}
  out["load_average_before"] = os.getloadavg()
  proc, port = process.start_server(repo, http_port=0)
  try:
    rows = _server_rows("edgeinfer", proc, port, model, inputs[0], expected[0], args)
  finally:
    process.stop_server(proc)
  python = triton_python(args.triton_python)
  if python is None:
    out["triton"] = "not run: no interpreter with nvidia-pytriton (requirements-triton.txt, --triton_python)"
  else:
    proc, port = process.start_triton(repo, python=python)
    try:
      rows += _server_rows("triton", proc, port, model, inputs[0], expected[0], args)
    finally:
      process.stop_server(proc)
  out["points"] = rows
  out["load_average_after"] = os.getloadavg()
  return out
