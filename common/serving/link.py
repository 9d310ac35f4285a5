"""The uplink between device and server, following a bandwidth trace (`coinfer.traces.Trace`).

One `Link` interface for every kind (`LINKS`: `pacer`, `tc`, `none`), passed to the device
runtime as one object. The deploy runner asks a link for its `network()` (where the server
listens, how the server and device processes are started, and a JSON `spec` from which the device
process rebuilds its side with `from_spec`); the device runtime calls `start(t0)`, `hand_over`
for each request (when the sender may put it on the socket, and the link time it knows),
`backlog_bits` for the controller and `stop()`. A new link kind is one class here.

`Pacer`: a user-space FIFO link inside the device's sender. A payload handed over at t starts
when the link is free, s = max(t, free), and has arrived at e = trace.transfer_end(s, bits);
the sender holds the request until e, then sends it over loopback. Deterministic given the
hand-over times, and the same arithmetic as `coinfer.simulate`.

`TcNetwork` + `TcShaper`: real kernel shaping. Two network namespaces joined by a veth pair
(addresses only inside them), the server runs in one, the device in the other; on the device
side a `tbf` qdisc sets the rate (and a `netem` qdisc a delay, when asked and the kernel has
it), and `TcShaper` changes the tbf rate at every step of the trace. Teardown (deleting both
namespaces removes the veth pair and its qdiscs) runs on exit, on errors and on SIGTERM.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

from common.errors import ServingError

SERVER_ADDR, DEVICE_ADDR = "10.77.0.2", "10.77.0.1"
TBF_BURST_BYTES = 1600  # one MTU-sized packet: a frame cannot ride a full bucket past the rate
TBF_LATENCY_MS = 500
TC_SERVER_PORT = 8001  # the server's port on the tc link's veth
TBF_FLOOR_BPS = 8000  # tc's tbf rate for a trace's zero-rate steps
UNSHAPED_BPS = 1e9  # the tc link's rate before the stream starts


class Pacer:
  """User-space FIFO uplink; times are seconds since the stream's start."""

  def __init__(self, trace):
    self.trace = trace
    self.free_s = 0.0
    self.inflight: list[tuple[float, float, float]] = []  # (start, end, bits)

  def schedule(self, t_s: float, bits: float) -> tuple[float, float]:
    """(start, end) of a payload of `bits` handed over at t_s."""
    start = max(t_s, self.free_s)
    end = self.trace.transfer_end(start, bits)
    self.free_s = end
    self.inflight.append((start, end, bits))
    return start, end

  def backlog_bits(self, t_s: float) -> float:
    """Bits handed over but not yet delivered at t_s."""
    self.inflight = [f for f in self.inflight if f[1] > t_s]
    left = 0.0
    for s, _, bits in self.inflight:
      left += bits if s >= t_s else bits - delivered_bits(self.trace, s, t_s)
    return max(left, 0.0)

  def pending(self, t_s: float) -> tuple[float, float]:
    """(bits, seconds so far) of the transfer on the link at t_s, (0, 0) when none is."""
    running = [(bits, t_s - s) for s, e, bits in self.inflight if s < t_s < e]
    return running[0] if running else (0.0, 0.0)


def delivered_bits(trace, start_s: float, until_s: float) -> float:
  """Bits a piecewise-constant trace (times_s, rates_bps, period_s) delivers in [start_s, until_s)."""
  import numpy as np

  times, rates, period = np.asarray(trace.times_s), np.asarray(trace.rates_bps), float(trace.period_s)
  ends = np.append(times[1:], period)
  total, t = 0.0, float(start_s)
  while t < until_s:
    base = (t // period) * period
    i = int(np.searchsorted(times, t - base, side="right") - 1)
    seg_end = min(base + ends[i], until_s)
    total += (seg_end - t) * rates[i]
    t = seg_end if seg_end > t else t + 1e-12
  return total


# ---------------------------------------------------------------- tc


def require_tc() -> None:
  """Raises ServingError naming the pacer link unless root, `ip` and `tc` are available."""
  missing = [t for t in ("ip", "tc") if shutil.which(t) is None]
  if os.geteuid() != 0 or missing:
    why = f"{' and '.join(missing)} not found (install iproute2)" if missing else "it needs root"
    raise ServingError(
      f"the tc link shapes the kernel's network: {why}; run with --config.deploy.link=pacer instead"
    )


def _run(*cmd: str) -> None:
  r = subprocess.run(cmd, capture_output=True, text=True, check=False)
  if r.returncode != 0:
    raise ServingError(f"`{' '.join(cmd)}` failed: {r.stderr.strip() or r.stdout.strip()}")


def tbf_args(rate_bps: float) -> list[str]:
  return [
    "tbf",
    "rate",
    f"{max(int(rate_bps), TBF_FLOOR_BPS)}bit",
    "burst",
    str(TBF_BURST_BYTES),
    "latency",
    f"{TBF_LATENCY_MS}ms",
  ]


def set_rate(netns: str, iface: str, rate_bps: float, parent: tuple = ("root",)) -> None:
  """Changes the tbf rate of `iface` in namespace `netns`."""
  _run(
    "ip",
    "netns",
    "exec",
    netns,
    "tc",
    "qdisc",
    "change",
    "dev",
    iface,
    *parent,
    "handle",
    "10:",
    *tbf_args(rate_bps),
  )


def qdisc_counters(netns: str, iface: str) -> tuple[int, int]:
  """(bytes, packets) the tbf qdisc (handle 10:) on `iface` in `netns` has sent: what the kernel
  counts against the bucket (each packet with its Ethernet, IP and TCP headers)."""
  import json

  r = subprocess.run(
    ["ip", "netns", "exec", netns, "tc", "-s", "-j", "qdisc", "show", "dev", iface],
    capture_output=True,
    text=True,
    check=False,
  )
  if r.returncode != 0:
    raise ServingError(f"`tc -s qdisc show dev {iface}` failed: {r.stderr.strip()}")
  for q in json.loads(r.stdout):
    if q.get("kind") == "tbf":
      return int(q["bytes"]), int(q["packets"])
  raise ServingError(f"no tbf qdisc on {iface} in {netns}")


class TcNetwork:
  """Context manager: namespaces `<tag>_dev` and `<tag>_srv`, veth `<tag>d` <-> `<tag>s`, the
  device side's egress shaped by `root 10: tbf`, or `root 1: netem delay` -> `1:1 10: tbf`
  with a delay."""

  def __init__(self, rate_bps: float, *, delay_ms: float = 0.0, tag: str | None = None):
    require_tc()
    self.tag = tag or f"ei{os.getpid() % 100000}"
    self.device_ns, self.server_ns = f"{self.tag}_dev", f"{self.tag}_srv"
    self.device_iface, self.server_iface = f"{self.tag}d", f"{self.tag}s"
    self.rate_bps, self.delay_ms = rate_bps, delay_ms
    self.tbf_parent = ("parent", "1:1") if delay_ms > 0 else ("root",)

  def __enter__(self):
    try:
      _run("ip", "netns", "add", self.device_ns)
      _run("ip", "netns", "add", self.server_ns)
      _run(
        "ip",
        "link",
        "add",
        self.device_iface,
        "netns",
        self.device_ns,
        "type",
        "veth",
        "peer",
        "name",
        self.server_iface,
        "netns",
        self.server_ns,
      )
      for ns, iface, addr in (
        (self.device_ns, self.device_iface, DEVICE_ADDR),
        (self.server_ns, self.server_iface, SERVER_ADDR),
      ):
        _run("ip", "-n", ns, "addr", "add", f"{addr}/30", "dev", iface)
        _run("ip", "-n", ns, "link", "set", iface, "up")
        _run("ip", "-n", ns, "link", "set", "lo", "up")
      tc = ("ip", "netns", "exec", self.device_ns, "tc", "qdisc", "add", "dev", self.device_iface)
      if self.delay_ms > 0:
        try:
          _run(*tc, "root", "handle", "1:", "netem", "delay", f"{self.delay_ms}ms")
        except ServingError as e:
          raise ServingError(
            f"netem delay is not available in this kernel ({e}); run with --delay-ms 0"
          ) from None
      _run(*tc, *self.tbf_parent, "handle", "10:", *tbf_args(self.rate_bps))
    except BaseException:
      self.close()
      raise
    return self

  def close(self) -> None:
    for ns in (self.device_ns, self.server_ns):
      subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)

  def __exit__(self, *exc):
    self.close()

  def exec_prefix(self, ns: str) -> list[str]:
    return ["ip", "netns", "exec", ns]


class TcShaper:
  """A thread that sets the device side's tbf rate to trace.rate_at(t) at every step of the
  trace, t counted from `start()`, each change started early by the median time the last ones
  took; `stop()` joins it."""

  def __init__(self, trace, netns: str, iface: str, parent: tuple = ("root",)):
    self.trace, self.netns, self.iface, self.parent = trace, netns, iface, tuple(parent)
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._loop, daemon=True)
    self.changes = 0
    self.lags_s: list[float] = []  # how late each change was applied after its trace boundary
    self.durations_s: list[float] = []  # how long each change took (the `tc` process)
    self.error: Exception | None = None

  def start(self, t0: float) -> None:
    self.t0 = t0
    began = time.monotonic()
    set_rate(self.netns, self.iface, self.trace.rate_at(0.0), self.parent)
    self.durations_s.append(time.monotonic() - began)
    self._thread.start()

  def _boundary_after(self, t: float) -> float:
    """The first step boundary of the (wrapping) trace after stream time t."""
    import numpy as np

    period, local = divmod(t, self.trace.period_s)
    nxt = np.asarray(self.trace.times_s)
    nxt = nxt[nxt > local]
    return period * self.trace.period_s + (float(nxt[0]) if nxt.size else self.trace.period_s)

  def _loop(self) -> None:
    """Each boundary's change, started ahead of it by the median time the last changes took from
    their planned start (the `tc` process and the thread's wake-up), so that it lands on the
    boundary rather than that long after it; the first by the initial change's duration."""
    import numpy as np

    last, took = 0.0, []  # took: each change's lag plus the lead it was started with
    while not self._stop.is_set():
      boundary = self._boundary_after(last)
      lead = float(np.median(took[-5:] if took else self.durations_s))
      if self._stop.wait(max(boundary - lead - (time.monotonic() - self.t0), 0.0)):
        return
      try:
        began = time.monotonic()
        set_rate(self.netns, self.iface, self.trace.rate_at(boundary + 1e-9), self.parent)
        done = time.monotonic()
      except ServingError as e:
        self.error = e
        return
      self.changes += 1
      self.durations_s.append(done - began)
      self.lags_s.append(done - self.t0 - boundary)
      took.append(self.lags_s[-1] + lead)
      last = boundary

  def stop(self) -> None:
    self._stop.set()
    if self._thread.is_alive():
      self._thread.join(timeout=2)


# ---------------------------------------------------------------- the Link interface


@dataclasses.dataclass(frozen=True)
class Network:
  """Where the server listens and how each process is started on a link's network."""

  server_host: str
  server_port: int  # 0: the server picks a free port
  server_prefix: tuple = ()  # command prefix of the server process (e.g. `ip netns exec NS`)
  device_prefix: tuple = ()
  spec: dict = dataclasses.field(default_factory=dict)  # the device side, for `from_spec`
  device_address: str = ""  # HOST:PORT the device connects to ("": the server's own address)


class Link:
  """The uplink's interface (the base class is the unshaped network, kind `none`)."""

  kind = "none"
  paced = False  # True: the link holds each request in user space and knows its transfer time

  def __init__(self, trace):
    self.trace = trace
    self.changes = 0  # rate changes applied (tc)
    self.t0: float | None = None  # the stream's start (monotonic clock), once started

  @contextlib.contextmanager
  def network(self):
    yield Network("127.0.0.1", 0, spec={"kind": self.kind})

  def start(self, t0: float) -> None:
    """The stream starts at monotonic time t0 (times below are seconds since then)."""
    self.t0 = t0

  def stop(self) -> None:
    """The stream ended (also on errors)."""

  def hand_over(self, ready_s: float, bits: float) -> tuple[float, float]:
    """A request of `bits` is ready at `ready_s`: (when to send it, its transfer start)."""
    return ready_s, ready_s

  def backlog_bits(self, t_s: float, unanswered_bits: float) -> float:
    """Bits handed over and not yet delivered (pacer) or answered (others) at t_s."""
    return unanswered_bits

  def pending(self, t_s: float) -> tuple[float, float] | None:
    """(bits, seconds so far) of the transfer a paced link is sending at t_s; None where the device
    learns it from the answers (`common.serving.device.Ledger`)."""
    return None

  def wire_counter(self) -> tuple[int, int] | None:
    """(bytes, packets) the kernel's shaper has sent so far (tc), None where nothing counts them."""
    return None

  def shaping(self) -> dict:
    """The shaper's settings a model of the link needs (tc: the tbf bucket's)."""
    return {}

  def change_lag_s(self) -> float:
    """The median delay between a trace step and the shaper's rate change (0: none measured)."""
    return 0.0


class PacerLink(Link):
  """The user-space FIFO `Pacer` inside the device's sender, over loopback."""

  kind, paced = "pacer", True

  def start(self, t0: float) -> None:
    self.t0, self.pacer = t0, Pacer(self.trace)

  def hand_over(self, ready_s: float, bits: float) -> tuple[float, float]:
    start, end = self.pacer.schedule(ready_s, bits)
    return end, start

  def backlog_bits(self, t_s: float, unanswered_bits: float) -> float:
    return self.pacer.backlog_bits(t_s)

  def pending(self, t_s: float) -> tuple[float, float]:
    return self.pacer.pending(t_s)


class TcLink(Link):
  """The kernel's tbf token bucket on a veth pair between two namespaces, its rate following the
  trace (`TcNetwork`, `TcShaper`); `delay_ms` adds netem's delay where the kernel has it."""

  kind = "tc"

  def __init__(self, trace, *, delay_ms: float = 0.0, netns: str = "", iface: str = "", parent=("root",),
               capture: str = ""):  # fmt: skip
    super().__init__(trace)
    self.delay_ms, self.netns, self.iface, self.parent = delay_ms, netns, iface, tuple(parent)
    self.capture = capture  # a path: every packet of the device's side (`common.serving.capture`)
    self.shaper = None

  @contextlib.contextmanager
  def _capturing(self, net):
    from common.serving import capture

    if not self.capture:
      yield
      return
    tcp_info = str(Path(self.capture).with_name("tcp_info.jsonl"))
    proc = capture.start(
      net.device_iface, self.capture, tcp_info=tcp_info, prefix=net.exec_prefix(net.device_ns)
    )
    try:
      yield
    finally:
      capture.stop(proc)

  @contextlib.contextmanager
  def network(self):
    """Two namespaces and the shaped veth pair; with a delay, the server listens on its namespace's
    loopback and a delaying relay (`common.serving.relay`, delay_ms / 2 each way) on the veth; with
    `capture`, a packet capture on the device's side throughout."""
    from common.serving import relay

    # unshaped until the stream starts (`start` sets the trace's rate): the device's calibration
    # measures compute and round trip, not the trace's first seconds
    with TcNetwork(UNSHAPED_BPS) as net, self._capturing(net):
      spec = {
        "kind": self.kind,
        "netns": net.device_ns,
        "iface": net.device_iface,
        "parent": list(net.tbf_parent),
      }
      server_prefix, device_prefix = (
        tuple(net.exec_prefix(net.server_ns)),
        tuple(net.exec_prefix(net.device_ns)),
      )
      if self.delay_ms <= 0:
        yield Network(SERVER_ADDR, TC_SERVER_PORT, server_prefix, device_prefix, spec)
        return
      proc = relay.start(
        f"{SERVER_ADDR}:{TC_SERVER_PORT}", "127.0.0.1:8002", self.delay_ms / 2, prefix=server_prefix
      )
      try:
        yield Network(
          "127.0.0.1",
          8002,
          server_prefix,
          device_prefix,
          spec,
          device_address=f"{SERVER_ADDR}:{TC_SERVER_PORT}",
        )
      finally:
        proc.terminate()
        proc.wait(5)

  def start(self, t0: float) -> None:
    if not (self.netns and self.iface):
      raise ServingError(
        "the tc link needs the device's namespace and interface (the deploy step sets them up)"
      )
    self.t0, self.shaper = t0, TcShaper(self.trace, self.netns, self.iface, self.parent)
    self.shaper.start(t0)

  def stop(self) -> None:
    if self.shaper is not None:
      self.shaper.stop()
      self.changes = self.shaper.changes

  def wire_counter(self) -> tuple[int, int] | None:
    return qdisc_counters(self.netns, self.iface) if self.netns and self.iface else None

  def shaping(self) -> dict:
    return {"burst_bytes": TBF_BURST_BYTES, "floor_bps": TBF_FLOOR_BPS, "latency_ms": TBF_LATENCY_MS}

  def change_lag_s(self) -> float:
    import numpy as np

    lags = self.shaper.lags_s if self.shaper is not None else []
    return float(np.median(lags)) if lags else 0.0


LINKS = {"pacer": PacerLink, "tc": TcLink, "none": Link}


def make(kind: str, trace, *, delay_ms: float = 0.0, capture: str = "") -> Link:
  """The link of `kind` (one of LINKS) along `trace`, for the deploy runner (`capture`: tc only)."""
  if kind not in LINKS:
    raise ServingError(f"link {kind!r}: must be one of {list(LINKS)}")
  if kind == "tc":
    require_tc()
    return TcLink(trace, delay_ms=delay_ms, capture=capture)
  if capture:
    raise ServingError(f"a packet capture needs the tc link, not {kind!r}")
  return LINKS[kind](trace)


def from_spec(spec: dict, trace) -> Link:
  """The device side of a link from its `Network.spec` (in the device process)."""
  if spec.get("kind") == "tc":
    return TcLink(trace, netns=spec["netns"], iface=spec["iface"], parent=spec.get("parent", ("root",)))
  return LINKS[spec.get("kind", "none")](trace)
