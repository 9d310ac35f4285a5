"""The runtime under load and faults: device streams whose every answer is checked, and a garbage device.

Each device stream is `device.run_stream` (its own client, its own frame clock and deadline)
sending, for frame k of stream s, input `pick(s, k)` of a pool of random inputs whose expected
outputs this process computed with onnxruntime on the same model file; an answer counts as
`wrong` unless it equals that expected output exactly (and the answer's id is the request's,
which `run_stream` checks). `record` turns a stream's frames into a complete account: every
frame is ok, late or lost, with the reasons counted. `garbage` is a device that sends the
server malformed bytes of every kind until told to stop.

  python -m common.serving.load --url HOST:PORT --repository DIR --model NAME --streams 8 \
      --first-stream 0 --frames 600 --fps 20 --deadline 1.0 --out streams.json
  python -m common.serving.load --url HOST:PORT --repository DIR --model NAME --garbage 20 --out sent.json

runs that many streams as threads of one process (`launch.bench deploy --load` starts several),
or the garbage device for that many seconds.
"""

from __future__ import annotations

import argparse
import collections
import socket
import threading
import time

import numpy as np

from common.serving import device as dev
from common.serving import repository

POOL = 64  # distinct inputs per model; frame k of stream s sends pick(s, k)


def pool(model: repository.Model, n: int = POOL, seed: int = 0) -> tuple[list[dict], list[np.ndarray]]:
  """n random inputs of `model` (per its config) and the output onnxruntime computes for each;
  raises ValueError unless the n outputs are pairwise different (so an answer names its input)."""
  rng = np.random.default_rng(seed)
  inputs, expected = [], []
  for _ in range(n):
    feeds = {}
    for s in model.inputs:
      dt = np.dtype(repository.NUMPY[s.datatype])
      if dt.kind == "f":
        feeds[s.name] = rng.normal(0, 1, s.shape).astype(dt)
      else:
        hi = 2 if dt == np.bool_ else min(np.iinfo(dt).max, 255) + 1
        feeds[s.name] = rng.integers(0, hi, s.shape).astype(dt)
    inputs.append(feeds)
    expected.append(model.run(feeds)[0])
  if len({e.tobytes() for e in expected}) != n:
    raise ValueError(f"model {model.name}: {n} random inputs do not give {n} different outputs")
  return inputs, expected


def pick(stream: int, frame: int, n: int = POOL) -> int:
  return (stream * 7919 + frame * 31 + frame // n) % n


def record(results: list[dev.FrameResult], picks: list[int], expected, deadline_s: float) -> dict:
  """A stream's complete account: status counts, wrong answers, lost reasons, latencies."""
  wrong = [
    r.frame
    for r, i in zip(results, picks, strict=True)
    if r.output is not None and not np.array_equal(r.output, expected[i])
  ]
  out = dev.summary(results, deadline_s)
  out["answered"] = sum(r.output is not None for r in results)  # late answers included
  out["wrong"] = len(wrong)
  out["wrong_frames"] = wrong[:20]
  out["unaccounted"] = sum(r.status not in ("ok", "late", "lost", "refused") for r in results)
  out["reasons"] = dict(collections.Counter(r.error.split(":")[0][:60] for r in results if r.error))
  out["latencies_ms"] = [round(r.latency_s * 1e3, 3) for r in results if np.isfinite(r.latency_s)]
  # one letter per frame: o(k), L(ate), x (lost), r(efused)
  out["statuses"] = "".join(
    {"ok": "o", "late": "L", "lost": "x", "refused": "r"}.get(r.status, "?") for r in results
  )
  return out


def stream(
  url: str,
  model: repository.Model,
  inputs,
  expected,
  *,
  sid: int,
  frames: int,
  fps: float,
  deadline_s: float,
  link=None,
  stop: threading.Event | None = None,
  connect_timeout_s: float = 10.0,
) -> dict:
  """One device stream against `url` over `link` (None: the network as it is); returns `record` plus
  the client's reconnects."""
  client = dev.Client(url)
  client.connect(connect_timeout_s)
  picks = [pick(sid, k, len(inputs)) for k in range(frames)]
  output = model.outputs[0].name

  def step(k, obs):
    return dev.Request(model.name, inputs[picks[k]], output)

  try:
    results = dev.run_stream(
      client, step, frames=frames, fps=fps, deadline_s=deadline_s, link=link, stop=stop
    )
  finally:
    client.close()
  picks = picks[: len(results)]
  return {"stream": sid, **record(results, picks, expected, deadline_s), "reconnects": client.reconnects}


def run_streams(
  url: str, repo, model_name: str, *, streams: int, first: int = 0, seed: int = 0, **kw
) -> list:
  """`streams` concurrent `stream`s (threads of this process), ids first .. first + streams - 1."""
  model = served_model(repo, model_name)
  inputs, expected = pool(model, seed=seed)
  out: list = [None] * streams
  errors: list = []

  def one(i):
    try:
      out[i] = stream(url, model, inputs, expected, sid=first + i, **kw)
    except Exception as e:  # noqa: BLE001 - reported with the others, never silently dropped
      errors.append(f"stream {first + i}: {type(e).__name__}: {e}")

  threads = [threading.Thread(target=one, args=(i,)) for i in range(streams)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  if errors:
    raise RuntimeError("; ".join(errors))
  return out


def merge(records: list[dict], wall_s: float) -> dict:
  """Totals over streams: answered requests per second, latency percentiles, every count."""
  lat = np.concatenate([np.asarray(r["latencies_ms"], float) for r in records] or [np.zeros(0)])
  tot = {s: sum(r["status"].get(s, 0) for r in records) for s in ("ok", "late", "lost", "refused")}
  reasons = collections.Counter()
  for r in records:
    reasons.update(r["reasons"])
  out = {
    "streams": len(records),
    "frames": sum(r["frames"] for r in records),
    "status": tot,
    "wrong": sum(r["wrong"] for r in records),
    "unaccounted": sum(r["unaccounted"] for r in records),
    "reasons": dict(reasons),
    "reconnects": sum(r.get("reconnects", 0) for r in records),
    "wall_s": wall_s,
    "answered": sum(r["answered"] for r in records),
    "answered_per_s": sum(r["answered"] for r in records) / wall_s if wall_s > 0 else 0.0,
    "ok_per_s": tot["ok"] / wall_s if wall_s > 0 else 0.0,
  }
  if lat.size:
    out.update({f"p{q}_ms": float(np.percentile(lat, q)) for q in (50, 90, 99)})
  return out


def served_model(repo, name: str) -> repository.Model:
  from pathlib import Path

  versions = repository.load_model(Path(repo) / name)
  return versions[-1]


# ---------------------------------------------------------------- the garbage device


def _wrong_fields(good: bytes, rng) -> bytes:
  """A valid request with one field made wrong: huge dims, a bad datatype, a name, the model, a cut."""
  from tritonclient.grpc import service_pb2

  req = service_pb2.ModelInferRequest.FromString(good)
  t = req.inputs[int(rng.integers(len(req.inputs)))]
  choice = int(rng.integers(5))
  if choice == 0:
    t.shape[:] = [int(rng.integers(1, 1 << 40)) for _ in range(int(rng.integers(1, 5)))]
  elif choice == 1:
    t.datatype = str(rng.choice(["FP64", "BYTES", "INT8", "", "\x00junk"]))
  elif choice == 2:
    t.name = bytes(rng.integers(0x20, 0x7F, 8, dtype=np.uint8)).decode()
  elif choice == 3:
    req.model_name = req.model_name + "x"
  else:
    req.raw_input_contents[0] = req.raw_input_contents[0][: int(rng.integers(len(req.raw_input_contents[0])))]
  return req.SerializeToString()


def _flipped(good: bytes, rng) -> bytes:
  b = bytearray(good)
  for i in rng.integers(0, len(b), int(rng.integers(1, 16))):
    b[i] = int(rng.integers(256))
  return bytes(b[: int(rng.integers(1, len(b) + 1))])


def _raw_tcp(url: str, rng, seen) -> None:
  """512 random bytes on a plain TCP connection: not HTTP/2 at all."""
  host, port = url.rsplit(":", 1)
  try:
    with socket.create_connection((host, int(port)), timeout=1) as s:
      s.sendall(bytes(rng.integers(0, 256, 512, dtype=np.uint8)))
    seen["raw tcp"]["sent"] += 1
  except OSError as e:
    seen["raw tcp"][type(e).__name__] += 1


def garbage(url: str, model: repository.Model, feeds: dict, stop: threading.Event, seed: int = 0) -> dict:
  """Sends garbage to `url` until `stop` is set: bytes that are no HTTP/2, gRPC frames that are
  no protobuf, valid requests with random bytes flipped or cut, requests with wrong shapes,
  datatypes, names and huge dims, and messages past the size limit. Returns {kind: {status: n}}."""
  import grpc

  rng = np.random.default_rng(seed)
  good = dev.infer_request(dev.Request(model.name, feeds, model.outputs[0].name), "g").SerializeToString()
  seen: dict = collections.defaultdict(collections.Counter)
  ch = grpc.insecure_channel(url, options=[("grpc.max_send_message_length", 64 << 20)])
  call = ch.unary_unary("/inference.GRPCInferenceService/ModelInfer")
  kinds = {
    "not protobuf": lambda: b"\xff\xff\xff\xff\x0f" + bytes(rng.integers(0, 256, 64, dtype=np.uint8)),
    "flipped bytes": lambda: _flipped(good, rng),
    "wrong fields": lambda: _wrong_fields(good, rng),
    "oversize": lambda: good + b"\x00" * (8 << 20),
  }
  try:
    n = 0
    while not stop.is_set():
      n += 1
      if n % 10 == 0:
        _raw_tcp(url, rng, seen)
        continue
      kind = list(kinds)[n % len(kinds)]
      try:
        call(kinds[kind](), timeout=5)
        seen[kind]["OK"] += 1
      except grpc.RpcError as e:
        seen[kind][e.code().name] += 1
      time.sleep(0.002)
  finally:
    ch.close()
  return {k: dict(v) for k, v in seen.items()}


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m common.serving.load", description=__doc__.splitlines()[0])
  p.add_argument("--url", required=True)
  p.add_argument("--repository", required=True)
  p.add_argument("--model", required=True)
  p.add_argument("--streams", type=int, default=8)
  p.add_argument("--first-stream", type=int, default=0)
  p.add_argument("--frames", type=int, default=600)
  p.add_argument("--fps", type=float, default=20.0)
  p.add_argument("--deadline", type=float, default=1.0)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--garbage", type=float, default=0.0, help="seconds of garbage instead of streams")
  p.add_argument("--out", required=True)
  a = p.parse_args(argv)
  from common.report import write_json

  if a.garbage > 0:
    model = served_model(a.repository, a.model)
    stop = threading.Event()
    threading.Timer(a.garbage, stop.set).start()
    write_json(a.out, garbage(a.url, model, pool(model, 1, a.seed)[0][0], stop, a.seed))
    return 0
  out = run_streams(
    a.url,
    a.repository,
    a.model,
    streams=a.streams,
    first=a.first_stream,
    seed=a.seed,
    frames=a.frames,
    fps=a.fps,
    deadline_s=a.deadline,
  )
  write_json(a.out, out)
  return 0


if __name__ == "__main__":
  from common.cli import run_main

  run_main(main)
