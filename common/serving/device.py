"""The device runtime: a frame stream through a device part, the uplink and the server.

The stream's named parts: the `FrameClock` (frame k arrives at t0 + k / fps, or at given
arrival times); the device loop (`_produce`), which asks `step(k, Observation)` for a request
(the technique's controller picks a setup, its device part runs in the LiteRT interpreter and
packs the payload), builds the Open Inference Protocol message once (its size is what the link
carries) and hands it to the `Link`; the `Sender`, which sends it at once, or from its thread
when the link holds it (the pacer), over the protocol's gRPC stub with the deadline set to what
is left of the frame's; the receiver (`Ledger.answered`), which records each answer or error and
the throughput samples the controller sees; and the `Client`'s reconnection: when the server goes
away (UNAVAILABLE), frames are counted lost while the client reconnects with exponential
backoff, and the stream goes on. A frame answered after its deadline, or not at all, is a miss.
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
  pending: tuple = (0.0, 0.0)  # (bits, seconds so far) of the oldest transfer still on the link


@dataclasses.dataclass
class Request:
  model: str
  inputs: dict  # name -> np.ndarray (dtype and shape as the model's config)
  output: str
  setup: int = 0
  device_s: float = 0.0  # device-part compute (the interpreter), excluding the controller
  control_s: float = 0.0
  parameters: dict = dataclasses.field(default_factory=dict)  # name -> float, the request's parameters


@dataclasses.dataclass
class FrameResult:
  frame: int
  setup: int = -1
  status: str = "pending"  # ok | late | lost | refused (the server's admission control said no)
  arrival_s: float = 0.0
  latency_s: float = float("inf")
  wait_s: float = 0.0  # the device loop was busy with earlier frames
  control_s: float = 0.0
  device_s: float = 0.0
  link_s: float = 0.0  # hand-over to the link until sent (pacer) / transfer estimate (tc)
  server_s: float = 0.0  # the model's compute time the server reports
  wire_bytes: int = 0  # the serialized request
  closed_s: float = float("inf")  # stream clock when the answer or the error (the deadline's) came
  output: np.ndarray | None = None
  error: str = ""


_DTYPE_NAMES = {
  np.dtype(np.uint8): "UINT8",
  np.dtype(np.float32): "FP32",
  np.dtype(np.int32): "INT32",
  np.dtype(np.int64): "INT64",
}
_NUMPY = {v: k for k, v in _DTYPE_NAMES.items()}


def infer_request(req: Request, request_id: str = "0"):
  """The Open Inference Protocol's ModelInferRequest of `req` (raw input contents): built once per
  frame, its size is what the link carries and the same message is sent."""
  from tritonclient.grpc import service_pb2

  msg = service_pb2.ModelInferRequest(model_name=req.model, id=request_id)
  for name, arr in req.inputs.items():
    arr = np.ascontiguousarray(arr)
    msg.inputs.add(name=name, datatype=_DTYPE_NAMES[arr.dtype], shape=arr.shape)
    msg.raw_input_contents.append(arr.tobytes())
  for name, value in req.parameters.items():
    msg.parameters[name].double_param = float(value)
  msg.outputs.add(name=req.output)
  return msg


def request_bytes(req: Request) -> int:
  """Size of the serialized ModelInferRequest `req` becomes (what the link carries)."""
  return infer_request(req, "0000").ByteSize()


def output_array(resp, name: str) -> np.ndarray:
  """The output `name` of a ModelInferResponse (raw output contents) as an array."""
  for i, o in enumerate(resp.outputs):
    if o.name == name:
      return np.frombuffer(resp.raw_output_contents[i], _NUMPY[o.datatype]).reshape(tuple(o.shape))
  raise ServingError(f"the answer has no output {name!r} (it has {[o.name for o in resp.outputs]})")


def compute_s(resp) -> float:
  """The model's compute time the server reports (edgeinfer's `compute_ns` parameter; 0 if absent)."""
  return resp.parameters["compute_ns"].int64_param * 1e-9 if "compute_ns" in resp.parameters else 0.0


class Client:
  """A gRPC channel to an Open Inference Protocol server with reconnection: `connect()` retries
  with backoff; `mark_down()` and `available()` drive the reconnection during a stream."""

  def __init__(self, url: str, *, backoff_s: float = 0.05, max_backoff_s: float = 1.0):
    self.url, self.backoff0, self.max_backoff = url, backoff_s, max_backoff_s
    self.stub = None
    self._channel = None
    self.down_until = 0.0
    self.backoff = backoff_s
    self.reconnects = 0
    self._lock = threading.Lock()
    self._probing = False

  def _make(self) -> None:
    import grpc
    from tritonclient.grpc import service_pb2_grpc

    options = [
      ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
      ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
      ("grpc.initial_reconnect_backoff_ms", 50),
      ("grpc.min_reconnect_backoff_ms", 50),
      ("grpc.max_reconnect_backoff_ms", 1000),
    ]
    self._channel = grpc.insecure_channel(self.url, options=options)
    self.stub = service_pb2_grpc.GRPCInferenceServiceStub(self._channel)

  def connect(self, timeout_s: float = 10.0) -> None:
    """Waits until the server is live (raises ServingError naming the address when it is not)."""
    t_end = time.monotonic() + timeout_s
    while True:
      if self.try_connect():
        return
      if time.monotonic() > t_end:
        raise ServingError(
          f"the server at {self.url} is not reachable; start it with `edgeinfer serve --repository=DIR` "
          "or set the right --config.deploy.server=HOST:PORT"
        )
      time.sleep(min(self.backoff, max(t_end - time.monotonic(), 0.0)))
      self.backoff = min(self.backoff * 2, self.max_backoff)

  def live(self, timeout_s: float = 0.5) -> bool:
    import grpc
    from tritonclient.grpc import service_pb2

    try:
      return bool(self.stub.ServerLive(service_pb2.ServerLiveRequest(), timeout=timeout_s).live)
    except grpc.RpcError:
      return False

  def try_connect(self) -> bool:
    if self.stub is None:
      self._make()
    live = self.live()
    if live:
      self.backoff, self.down_until = self.backoff0, 0.0
    return live

  def infer(self, req: Request, timeout_s: float = 10.0) -> np.ndarray:
    """One blocking request (calibration, warm-up); the output `req.output`."""
    return output_array(self.stub.ModelInfer(infer_request(req), timeout=timeout_s), req.output)

  def mark_down(self) -> None:
    """The server went away: drop the channel, retry after the current backoff."""
    with self._lock:
      if self.down_until:
        return
      self.down_until = time.monotonic() + self.backoff
      old, self._channel, self.stub = self._channel, None, None
    if old is not None:
      threading.Thread(target=old.close, daemon=True).start()

  def available(self):
    """The stub, or None while down; never blocks. A due retry probes the server in a background
    thread (a probe can take its whole timeout while a server starts), which reconnects or doubles
    the backoff, so the frames that arrive meanwhile are counted at once instead of queueing."""
    with self._lock:
      if not self.down_until:
        return self.stub
      if self._probing or time.monotonic() < self.down_until:
        return None
      self._probing = True
    threading.Thread(target=self._probe, daemon=True).start()
    return None

  def _probe(self) -> None:
    try:
      live = self.try_connect()
    except (OSError, ValueError, RuntimeError):  # one more failed retry
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
      self.live(timeout_s=2.0)
      ts.append(time.perf_counter() - t)
    return float(np.median(ts))

  def close(self) -> None:
    if self._channel is not None:
      self._channel.close()


# ---------------------------------------------------------------- the stream, in named parts


class FrameClock:
  """When frame k arrives: k / fps, or the given arrival times; seconds since the stream's start."""

  def __init__(self, frames: int, fps: float, arrivals_s=None):
    dt = 1.0 / fps
    self.times = (
      [k * dt for k in range(frames)] if arrivals_s is None else [float(a) for a in arrivals_s[:frames]]
    )
    self.t0 = time.monotonic() + 0.05

  def now(self) -> float:
    return time.monotonic() - self.t0

  def wait_for(self, t_s: float) -> None:
    pause = t_s - self.now()
    if pause > 0:
      time.sleep(pause)


class Ledger:
  """The stream's shared account, under one lock: the frames' results, the requests in flight and
  their bits, and the throughput samples the controller sees (`observation`). `answered` is the
  receiver: gRPC calls it with each answer or error."""

  def __init__(self, results: list[FrameResult], clock: FrameClock, *, deadline_s: float, rtt_s: float,
               from_answers: bool, client: Client):  # fmt: skip
    self.results, self.clock, self.deadline_s, self.rtt_s = results, clock, deadline_s, rtt_s
    self.from_answers, self.client = from_answers, client  # samples from answers (unpaced links)
    self.lock = threading.Condition()
    self.samples: list[tuple[float, float]] = []  # (visible at, throughput bps)
    self.tx_end = 0.0
    self.open: dict[int, tuple[float, float]] = {}  # frame -> (sent, bits) of the requests unanswered

  def observation(self, k: int, t_s: float, link, history: int) -> Observation:
    with self.lock:
      backlog = max(link.backlog_bits(t_s, sum(bits for _, bits in self.open.values())), 0.0)
      seen = tuple(tp for t, tp in self.samples if t <= t_s)[-history:]
      pending = link.pending(t_s)
      pending = self._pending(t_s) if pending is None else pending
    return Observation(k, self.results[k].arrival_s, backlog, seen, pending)

  def _pending(self, t_s: float) -> tuple[float, float]:
    """The oldest unanswered request's (bits, seconds on the link so far): from its send or the
    last transfer end the answers told, to t_s less a round trip ((0, 0) when none)."""
    if not self.open:
      return 0.0, 0.0
    sent, bits = self.open[min(self.open)]
    seconds = t_s - self.rtt_s - max(sent, self.tx_end)
    return (bits, seconds) if seconds > 0 else (0.0, 0.0)

  def opened(self, k: int, sent: float, bits: float) -> None:
    """Request k of `bits` was sent at `sent` and awaits its answer."""
    with self.lock:
      self.open[k] = (sent, bits)

  def closed(self, k: int) -> None:
    """Request k will get no answer (its send failed)."""
    with self.lock:
      self.open.pop(k, None)

  def sample(self, at_s: float, bits: float, seconds: float) -> None:
    with self.lock:
      self.samples.append((at_s, bits / max(seconds, 1e-9)))

  def finish(self, k: int, status: str, error: str = "") -> None:
    self.results[k].status, self.results[k].error = status, error

  def _transfer(self, answered: float, sent: float, bits: float, tx_end: float):
    """An unpaced link's transfer ended at about tx_end: a throughput sample and its link time."""
    start = max(sent, self.tx_end)
    self.tx_end = max(tx_end, self.tx_end)
    if tx_end > start:
      self.samples.append((answered, bits / (tx_end - start)))
      return tx_end - start
    return 0.0

  def answered(self, k: int, sent: float, bits: float, output: str, future) -> None:
    import grpc

    now = self.clock.now()
    with self.lock:
      self.open.pop(k, None)
      self.results[k].closed_s = now
      try:
        self._answer(k, now, sent, bits, output, future.result())
      except grpc.RpcError as e:
        self._error(k, now, sent, bits, e)
      except (grpc.FutureCancelledError, ServingError) as e:
        self.finish(k, "lost", str(e)[:200] or "cancelled")
      self.lock.notify_all()

  def _answer(self, k: int, now: float, sent: float, bits: float, output: str, resp) -> None:
    r = self.results[k]
    if resp.id != str(k):
      return self.finish(k, "lost", f"answer for request {resp.id!r} came back for frame {k}")
    r.server_s, r.output = compute_s(resp), output_array(resp, output)
    r.latency_s = now - r.arrival_s
    self.finish(k, "ok" if r.latency_s <= self.deadline_s else "late")
    if self.from_answers:  # the transfer ended about one base RTT and the compute before the answer
      r.link_s = self._transfer(now, sent, bits, now - r.server_s - self.rtt_s)

  def _error(self, k: int, now: float, sent: float, bits: float, e) -> None:
    import grpc

    code = e.code()
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
      self.finish(k, "late", "deadline exceeded")
      if self.from_answers:  # the transfer took at least this long, a bound the controller needs
        self._transfer(now, sent, bits, now - self.rtt_s)
      return
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:  # the server's admission refused it, at once
      return self.finish(k, "refused", f"{code.name}: {e.details()}"[:200])
    if code == grpc.StatusCode.UNAVAILABLE:
      self.client.mark_down()
    self.finish(k, "lost", f"{code.name}: {e.details()}"[:200])

  def wait_idle(self, timeout_s: float) -> None:
    with self.lock:
      self.lock.wait_for(lambda: not self.open, timeout=timeout_s)


class Sender:
  """Puts requests on the wire: at once (`send`), or from its own thread when the link holds them
  until `send_at` (`submit`, in order). A frame whose deadline passed is late; one that finds the
  server down is lost while the client reconnects."""

  def __init__(self, client: Client, ledger: Ledger):
    self.client, self.ledger = client, ledger
    self.queue: queue.Queue = queue.Queue()
    self.thread = threading.Thread(target=self._loop, daemon=True)
    self.thread.start()

  def submit(self, k: int, msg, output: str, send_at: float, bits: float) -> None:
    self.queue.put((k, msg, output, send_at, bits))

  def close(self) -> None:
    self.queue.put(None)
    self.thread.join()

  def _loop(self) -> None:
    while (item := self.queue.get()) is not None:
      k, msg, output, send_at, bits = item
      self.ledger.clock.wait_for(send_at)
      self.send(k, msg, output, bits)

  def send(self, k: int, msg, output: str, bits: float) -> None:
    import grpc

    led, r = self.ledger, self.ledger.results[k]
    left = r.arrival_s + led.deadline_s - led.clock.now()
    if left <= 0:
      return led.finish(k, "late", "deadline passed before sending")
    stub = self.client.available()
    if stub is None:
      return led.finish(k, "lost", "server unavailable")
    sent = led.clock.now()
    led.opened(k, sent, bits)
    try:
      future = stub.ModelInfer.future(msg, timeout=left)
    except (grpc.RpcError, ValueError, RuntimeError) as e:  # a channel closed under us
      led.closed(k)
      self.client.mark_down()
      return led.finish(k, "lost", str(e)[:200])
    future.add_done_callback(lambda f: led.answered(k, sent, bits, output, f))


def _produce(k: int, step, clock: FrameClock, ledger: Ledger, sender: Sender, link, history: int) -> None:
  """Frame k on the device: the technique's step, then the link and the sender."""
  r = ledger.results[k]
  begin = clock.now()
  r.wait_s = max(begin - r.arrival_s, 0.0)
  req = step(k, ledger.observation(k, begin, link, history))
  if req is None:  # answered on the device
    r.latency_s = clock.now() - r.arrival_s
    return ledger.finish(k, "ok" if r.latency_s <= ledger.deadline_s else "late")
  r.setup, r.device_s, r.control_s = req.setup, req.device_s, req.control_s
  msg = infer_request(req, str(k))
  r.wire_bytes = msg.ByteSize()
  bits = 8.0 * r.wire_bytes
  ready = clock.now()
  send_at, start = link.hand_over(ready, bits)
  if not link.paced:
    return sender.send(k, msg, req.output, bits)
  r.link_s = send_at - ready
  ledger.sample(send_at, bits, send_at - start)
  sender.submit(k, msg, req.output, send_at, bits)


def run_stream(
  client: Client,
  step: Callable[[int, Observation], Request],
  *,
  frames: int,
  fps: float,
  deadline_s: float,
  link=None,
  rtt_s: float = 0.0,
  history: int = 11,
  progress: Callable[[int], None] | None = None,
  stop: threading.Event | None = None,
  arrivals_s=None,
) -> list[FrameResult]:
  """Runs the stream (see the module docstring) over `link` (`common.serving.link.Link`; None: the
  network as it is); returns one FrameResult per frame. With `stop`, the stream ends early once it
  is set: no frame arrives after that, the ones sent are awaited. `arrivals_s` (seconds,
  non-decreasing, one per frame) replaces the frame clock k / fps; a `step` that returns None
  answers its frame on the device (no request: status ok, no bytes on the link)."""
  from common.serving import link as link_lib

  link = link_lib.Link(None) if link is None else link
  clock = FrameClock(frames, fps, arrivals_s)
  results = [FrameResult(k, arrival_s=clock.times[k]) for k in range(frames)]
  ledger = Ledger(
    results, clock, deadline_s=deadline_s, rtt_s=rtt_s, from_answers=not link.paced, client=client
  )
  sender = Sender(client, ledger)
  link.start(clock.t0)
  produced = frames
  try:
    for k in range(frames):
      clock.wait_for(results[k].arrival_s)
      if stop is not None and stop.is_set():
        produced = k
        break
      _produce(k, step, clock, ledger, sender, link, history)
      if progress:
        progress(k)
    sender.close()
    ledger.wait_idle(deadline_s + 5.0)
  finally:
    link.stop()
  del results[produced:]
  for r in results:
    if r.status == "pending":
      r.status, r.error = "lost", "no answer"
  return results


def overhead(results: list[FrameResult]) -> dict:
  """The runtime's own time per answered frame (end-to-end minus waiting for the device loop, the
  controller, the device part, the link and the server's compute), p50 and p99 in ms."""
  x = [
    r.latency_s - r.wait_s - r.control_s - r.device_s - r.link_s - r.server_s
    for r in results
    if r.status == "ok"
  ]
  if not x:
    return {}
  return {
    "overhead_p50_ms": float(np.percentile(x, 50) * 1e3),
    "overhead_p99_ms": float(np.percentile(x, 99) * 1e3),
  }


def summary(results: list[FrameResult], deadline_s: float) -> dict:
  """Miss rate, latency percentiles of answered frames, bytes per frame, status counts."""
  lat = np.asarray([r.latency_s for r in results if np.isfinite(r.latency_s)])
  met = np.asarray([r.status == "ok" and r.latency_s <= deadline_s for r in results])
  out = {
    "frames": len(results),
    "deadline_miss_rate": float(1.0 - met.mean()) if len(results) else 0.0,
    "bytes_per_frame": float(np.mean([r.wire_bytes for r in results])) if results else 0.0,
    "status": {s: sum(r.status == s for r in results) for s in ("ok", "late", "lost", "refused")},
  }
  if lat.size:
    out.update({f"p{q}_latency_s": float(np.percentile(lat, q)) for q in (50, 90, 99)})
    out["mean_latency_s"] = float(lat.mean())
  return out
