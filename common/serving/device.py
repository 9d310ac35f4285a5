"""The device runtime: a frame stream through a device part, the uplink and the server.

Frame k arrives at t0 + k / fps. The device loop asks `step(k, Observation)` for a request
(the technique's controller picks a setup, its device part runs in the LiteRT interpreter and
packs the payload) and hands it to the sender thread. The sender holds it for the link (the
`Pacer`; with `tc` the kernel does the holding) and calls the server with
`tritonclient.grpc.InferenceServerClient.async_infer`, the gRPC deadline set to what is left
of the frame's deadline. A frame answered after its deadline, or not at all, is a miss. When
the server goes away (UNAVAILABLE), frames are counted lost while the client reconnects with
exponential backoff, and the stream goes on.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
import time
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from common.errors import ServingError

MAX_MESSAGE_BYTES = 64 << 20


class Observation(NamedTuple):
  """What the device knows when frame `frame` arrives (times in seconds since the start)."""

  frame: int
  time_s: float
  backlog_bits: float  # bits handed to the link and not yet delivered (pacer) or answered (tc)
  throughputs_bps: tuple  # measured throughputs of finished transfers, oldest first


@dataclasses.dataclass
class Request:
  model: str
  inputs: dict  # name -> np.ndarray (dtype and shape as the model's config)
  output: str
  setup: int = 0
  device_s: float = 0.0  # device-part compute (the interpreter), excluding the controller
  control_s: float = 0.0


@dataclasses.dataclass
class FrameResult:
  frame: int
  setup: int = -1
  status: str = "pending"  # ok | late | lost
  arrival_s: float = 0.0
  latency_s: float = float("inf")
  wait_s: float = 0.0  # the device loop was busy with earlier frames
  control_s: float = 0.0
  device_s: float = 0.0
  link_s: float = 0.0  # hand-over to the link until sent (pacer) / transfer estimate (tc)
  server_s: float = 0.0  # the model's compute time the server reports
  wire_bytes: int = 0  # the serialized request
  output: np.ndarray | None = None
  error: str = ""


_DTYPE_NAMES = {
  np.dtype(np.uint8): "UINT8",
  np.dtype(np.float32): "FP32",
  np.dtype(np.int32): "INT32",
  np.dtype(np.int64): "INT64",
}


def _infer_inputs(inputs: dict):
  import tritonclient.grpc as tg

  out = []
  for name, arr in inputs.items():
    arr = np.ascontiguousarray(arr)
    t = tg.InferInput(name, list(arr.shape), _DTYPE_NAMES[arr.dtype])
    t.set_data_from_numpy(arr)
    out.append(t)
  return out


class Client:
  """tritonclient's gRPC client with reconnection: `connect()` retries with backoff."""

  def __init__(self, url: str, *, backoff_s: float = 0.05, max_backoff_s: float = 1.0):
    self.url, self.backoff0, self.max_backoff = url, backoff_s, max_backoff_s
    self.client = None
    self.down_until = 0.0
    self.backoff = backoff_s
    self.reconnects = 0
    self._lock = threading.Lock()
    self._probing = False

  def _make(self):
    import tritonclient.grpc as tg

    args = [
      ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
      ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
      ("grpc.initial_reconnect_backoff_ms", 50),
      ("grpc.min_reconnect_backoff_ms", 50),
      ("grpc.max_reconnect_backoff_ms", 1000),
    ]
    return tg.InferenceServerClient(self.url, channel_args=args)

  def connect(self, timeout_s: float = 10.0) -> None:
    """Waits until the server is live (raises ServingError naming the address when it is not)."""
    t_end = time.monotonic() + timeout_s
    while True:
      if self.try_connect():
        return
      if time.monotonic() > t_end:
        raise ServingError(
          f"the server at {self.url} is not reachable; start it with `python -m launch.serve --repository DIR` "
          "or pass the right --server HOST:PORT"
        )
      time.sleep(min(self.backoff, max(t_end - time.monotonic(), 0.0)))
      self.backoff = min(self.backoff * 2, self.max_backoff)

  def try_connect(self) -> bool:
    from tritonclient.utils import InferenceServerException

    if self.client is None:
      self.client = self._make()
    try:
      live = self.client.is_server_live(client_timeout=0.5)
    except InferenceServerException:
      live = False
    if live:
      self.backoff, self.down_until = self.backoff0, 0.0
    return live

  def mark_down(self) -> None:
    """The server went away: drop the channel, retry after the current backoff."""
    with self._lock:
      if self.down_until:
        return
      self.down_until = time.monotonic() + self.backoff
      old, self.client = self.client, None
    if old is not None:
      threading.Thread(target=old.close, daemon=True).start()

  def available(self) -> bool:
    """False while down; never blocks. A due retry probes the server in a background thread (a
    probe can take its whole timeout while a server starts), which reconnects or doubles the
    backoff, so the frames that arrive meanwhile are counted at once instead of queueing behind it."""
    with self._lock:
      if not self.down_until:
        return True
      if self._probing or time.monotonic() < self.down_until:
        return False
      self._probing = True
    threading.Thread(target=self._probe, daemon=True).start()
    return False

  def _probe(self) -> None:
    from tritonclient.utils import InferenceServerException

    try:
      live = self.try_connect()
    except (InferenceServerException, OSError, ValueError, RuntimeError):  # one more failed retry
      live = False
    with self._lock:
      if live:
        self.reconnects += 1
      else:
        self.backoff = min(self.backoff * 2, self.max_backoff)
        self.down_until = time.monotonic() + self.backoff
      self._probing = False

  def base_rtt_s(self, n: int = 10) -> float:
    ts = []
    for _ in range(n):
      t = time.perf_counter()
      self.client.is_server_live(client_timeout=2.0)
      ts.append(time.perf_counter() - t)
    return float(np.median(ts))

  def close(self) -> None:
    if self.client is not None:
      self.client.close()


def request_bytes(req: Request) -> int:
  """Size of the serialized ModelInferRequest `req` becomes (what the link carries)."""
  from tritonclient.grpc import service_pb2

  msg = service_pb2.ModelInferRequest(model_name=req.model, id="0000")
  for name, arr in req.inputs.items():
    msg.inputs.add(name=name, datatype=_DTYPE_NAMES[np.asarray(arr).dtype], shape=np.shape(arr))
    msg.raw_input_contents.append(np.ascontiguousarray(arr).tobytes())
  msg.outputs.add(name=req.output)
  return msg.ByteSize()


def run_stream(
  client: Client,
  step: Callable[[int, Observation], Request],
  *,
  frames: int,
  fps: float,
  deadline_s: float,
  pacer=None,
  shaper=None,
  rtt_s: float = 0.0,
  history: int = 11,
  progress: Callable[[int], None] | None = None,
  stop: threading.Event | None = None,
  arrivals_s=None,
) -> list[FrameResult]:
  """Runs the stream (see the module docstring); returns one FrameResult per frame. With `stop`,
  the stream ends early once it is set: no frame arrives after that, the ones sent are awaited.
  `arrivals_s` (seconds, non-decreasing, one per frame) replaces the frame clock k / fps; a `step`
  that returns None answers its frame on the device (no request: status ok, no bytes on the link)."""
  import tritonclient.grpc as tg
  from tritonclient.utils import InferenceServerException

  dt = 1.0 / fps
  times = [k * dt for k in range(frames)] if arrivals_s is None else [float(a) for a in arrivals_s[:frames]]
  results = [FrameResult(k, arrival_s=times[k]) for k in range(frames)]
  samples: list[tuple[float, float]] = []  # (visible at, throughput bps)
  lock = threading.Condition()
  state = {"outstanding": 0, "tx_end": 0.0, "unanswered_bits": 0.0}
  q: queue.Queue = queue.Queue()
  t0 = time.monotonic() + 0.05

  def now() -> float:
    return time.monotonic() - t0

  def finish(k: int, status: str, error: str = "", answered: float | None = None) -> None:
    r = results[k]
    r.status, r.error = status, error
    if answered is not None:
      r.latency_s = answered - r.arrival_s

  def callback(k, sent, bits, req_output, result, error):
    answered = now()
    with lock:
      state["outstanding"] -= 1
      state["unanswered_bits"] -= bits
      r = results[k]
      if error is not None:
        code = error.status() or ""
        if "DEADLINE_EXCEEDED" in code:
          finish(k, "late", "deadline exceeded")
          if pacer is None:  # tc: the transfer took at least this long, a bound the controller needs
            start = max(sent, state["tx_end"])
            if answered - rtt_s > start:
              samples.append((answered, bits / (answered - rtt_s - start)))
            state["tx_end"] = max(answered - rtt_s, state["tx_end"])
        else:
          if "UNAVAILABLE" in code:
            client.mark_down()
          finish(k, "lost", f"{code}: {error.message()}"[:200])
      else:
        resp = result.get_response()
        if resp.id != str(k):
          finish(k, "lost", f"answer for request {resp.id!r} came back for frame {k}")
        else:
          r.server_s = (
            resp.parameters["compute_ns"].int64_param * 1e-9 if "compute_ns" in resp.parameters else 0.0
          )
          r.output = result.as_numpy(req_output)
          finish(k, "ok", answered=answered)
          if r.latency_s > deadline_s:
            r.status = "late"
          if pacer is None:  # tc: the transfer ended about one base RTT and the compute before the answer
            tx_end = answered - r.server_s - rtt_s
            start = max(sent, state["tx_end"])
            if tx_end > start:
              samples.append((answered, bits / (tx_end - start)))
              r.link_s = tx_end - start
            state["tx_end"] = max(tx_end, state["tx_end"])
      lock.notify_all()

  def sender():
    while True:
      item = q.get()
      if item is None:
        return
      k, req, send_at, bits = item
      r = results[k]
      pause = send_at - now()
      if pause > 0:
        time.sleep(pause)
      left = r.arrival_s + deadline_s - now()
      if left <= 0:
        finish(k, "late", "deadline passed before sending")
        continue
      grpc_client = client.client if client.available() else None
      if grpc_client is None:
        finish(k, "lost", "server unavailable")
        continue
      with lock:
        state["outstanding"] += 1
        state["unanswered_bits"] += bits
      sent = now()
      try:
        grpc_client.async_infer(
          req.model,
          _infer_inputs(req.inputs),
          lambda result, error, k=k, sent=sent, bits=bits, o=req.output: callback(
            k, sent, bits, o, result, error
          ),
          outputs=[tg.InferRequestedOutput(req.output)],
          request_id=str(k),
          client_timeout=left,
        )
      except (InferenceServerException, ValueError, RuntimeError) as e:  # a channel closed under us
        with lock:
          state["outstanding"] -= 1
          state["unanswered_bits"] -= bits
        client.mark_down()
        finish(k, "lost", str(e)[:200])

  thread = threading.Thread(target=sender, daemon=True)
  thread.start()
  if shaper is not None:
    shaper.start(t0)
  produced = frames
  try:
    for k in range(frames):
      r = results[k]
      pause = r.arrival_s - now()
      if pause > 0:
        time.sleep(pause)
      if stop is not None and stop.is_set():
        produced = k
        break
      begin = now()
      r.wait_s = max(begin - r.arrival_s, 0.0)
      with lock:
        backlog = pacer.backlog_bits(begin) if pacer is not None else max(state["unanswered_bits"], 0.0)
        seen = tuple(tp for t, tp in samples if t <= begin)[-history:]
      req = step(k, Observation(k, r.arrival_s, backlog, seen))
      if req is None:  # answered on the device
        r.latency_s = now() - r.arrival_s
        r.status = "ok" if r.latency_s <= deadline_s else "late"
        if progress:
          progress(k)
        continue
      r.setup, r.device_s, r.control_s = req.setup, req.device_s, req.control_s
      r.wire_bytes = request_bytes(req)
      bits = 8.0 * r.wire_bytes
      ready = now()
      send_at = ready
      if pacer is not None:
        start, end = pacer.schedule(ready, bits)
        send_at, r.link_s = end, end - ready
        with lock:
          samples.append((end, bits / max(end - start, 1e-9)))
      q.put((k, req, send_at, bits))
      if progress:
        progress(k)
    q.put(None)
    thread.join()
    with lock:
      lock.wait_for(lambda: state["outstanding"] <= 0, timeout=deadline_s + 5.0)
  finally:
    if shaper is not None:
      shaper.stop()
  del results[produced:]
  for r in results:
    if r.status == "pending":
      r.status, r.error = "lost", "no answer"
  return results


def summary(results: list[FrameResult], deadline_s: float) -> dict:
  """Miss rate, latency percentiles of answered frames, bytes per frame, status counts."""
  lat = np.asarray([r.latency_s for r in results if np.isfinite(r.latency_s)])
  met = np.asarray([r.status == "ok" and r.latency_s <= deadline_s for r in results])
  out = {
    "frames": len(results),
    "deadline_miss_rate": float(1.0 - met.mean()) if len(results) else 0.0,
    "bytes_per_frame": float(np.mean([r.wire_bytes for r in results])) if results else 0.0,
    "status": {s: sum(r.status == s for r in results) for s in ("ok", "late", "lost")},
  }
  if lat.size:
    out.update({f"p{q}_latency_s": float(np.percentile(lat, q)) for q in (50, 90, 99)})
    out["mean_latency_s"] = float(lat.mean())
  return out
