"""The uplink between device and server, following a bandwidth trace (`coinfer.traces.Trace`).

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

import os
import shutil
import subprocess
import threading
import time

from common.errors import ServingError

SERVER_ADDR, DEVICE_ADDR = "10.77.0.2", "10.77.0.1"
TBF_BURST_BYTES = 1600  # one MTU-sized packet: a frame cannot ride a full bucket past the rate
TBF_LATENCY_MS = 500


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
  """Raises ServingError naming `--link pacer` unless root, `ip` and `tc` are available."""
  missing = [t for t in ("ip", "tc") if shutil.which(t) is None]
  if os.geteuid() != 0 or missing:
    why = f"{' and '.join(missing)} not found (install iproute2)" if missing else "it needs root"
    raise ServingError(f"--link tc shapes the kernel's network: {why}; run with --link pacer instead")


def _run(*cmd: str) -> None:
  r = subprocess.run(cmd, capture_output=True, text=True, check=False)
  if r.returncode != 0:
    raise ServingError(f"`{' '.join(cmd)}` failed: {r.stderr.strip() or r.stdout.strip()}")


def tbf_args(rate_bps: float) -> list[str]:
  return [
    "tbf",
    "rate",
    f"{max(int(rate_bps), 8000)}bit",
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
  trace, t counted from `start()`; `stop()` joins it."""

  def __init__(self, trace, netns: str, iface: str, parent: tuple = ("root",)):
    self.trace, self.netns, self.iface, self.parent = trace, netns, iface, tuple(parent)
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._loop, daemon=True)
    self.changes = 0
    self.error: Exception | None = None

  def start(self, t0: float) -> None:
    self.t0 = t0
    set_rate(self.netns, self.iface, self.trace.rate_at(0.0), self.parent)
    self._thread.start()

  def _loop(self) -> None:
    import numpy as np

    times = np.asarray(self.trace.times_s)
    while not self._stop.is_set():
      t = time.monotonic() - self.t0
      period, local = divmod(t, self.trace.period_s)
      nxt = times[times > local]
      boundary = period * self.trace.period_s + (nxt[0] if nxt.size else self.trace.period_s)
      if self._stop.wait(max(boundary - t, 0.0)):
        return
      try:
        set_rate(self.netns, self.iface, self.trace.rate_at(boundary + 1e-9), self.parent)
        self.changes += 1
      except ServingError as e:
        self.error = e
        return

  def stop(self) -> None:
    self._stop.set()
    if self._thread.is_alive():
      self._thread.join(timeout=2)
