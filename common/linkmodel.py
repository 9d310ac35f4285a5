"""Models of the uplink for simulators: the trace as a fluid FIFO, and the kernel's tbf token bucket
with TCP on it.

`FluidLink` is the trace's own arithmetic (a payload handed over at t starts when the link is free
and has arrived at `trace.transfer_end`): the pacer link.

`TbfLink` is what `tc ... tbf rate R burst B latency L` does to a frame's bytes, packet by packet,
when the rate follows a trace by `tc qdisc change` at every step (`common.serving.link.TcShaper`):

  - the rate never goes below `floor_bps` (tc's floor for a trace's zero-rate steps);
  - a packet of n bytes leaves when the bucket holds n bytes; the bucket fills at R / 8 bytes per
    second up to B bytes, so after an idle spell a packet up to B leaves at once;
  - a packet that has to wait leaves when the qdisc's watchdog fires, at the time the bucket would
    hold it at the rate of the moment it reached the head; a `tc qdisc change` to a new rate
    refills the bucket to B (the kernel's `tbf_change` sets tokens = buffer) but wakes nothing: the
    packet leaves at its watchdog or when the next packet is handed to the qdisc (the stream's next
    hand-over, `sends_every_s`), whichever comes first; changes land `change_lag_s` after the
    trace's step (measured by the shaper);
  - the bytes are counted as the kernel counts them (`WireProfile`, measured at the shaper during
    the calibration): each TCP segment of at most 1448 payload bytes carries 66 header bytes
    (Ethernet, IPv4, TCP with timestamps), a request carries its gRPC / HTTP/2 framing, and its
    answer's ACKs go back through the same qdisc after the answer;
  - TCP's tail loss probe: no ACK within 2 srtt + 2 timer ticks (2 srtt + 200 ms with one packet
    out) resends the last segment, unless the qdisc still holds it (the kernel does not retransmit
    a packet its own host still queues); srtt follows every packet's time in the qdisc.

`TcpTbfLink`, the simulator's tc link, is `TbfLink` with what the packet captures of the running
link (`deploy.capture`, docs/deploy.md) show TCP doing on it:

  - every change refills the bucket, to the same rate too (as `tbf_change` does);
  - a request's segments enter the qdisc together (one GSO packet, cut by tbf), so at a low rate
    its byte limit (rate x latency + burst, as tc computes it at every change: 2100 bytes at the
    floor) takes the first segment and drops the next. TCP sends a dropped segment again at its
    tail loss probe when that comes before the server's delayed ACK of the first segment (40 ms),
    else once the next request has overtaken it (that request's hand-over plus a round trip: the
    server's SACK), or at the retransmission timeout (200 ms);
  - while a segment of the connection waits alone in the qdisc, TCP hands no later request over
    (it goes when that segment has left), so nothing wakes the waiting segment but its watchdog and
    the device's ACK of the server's answer at a request's deadline (`deadline_s` after each
    request's hand-over).

Variants of `TbfLink`, for comparison (`VARIANTS`; `python -m launch.bench deploy --links
--link-replay --link-variant NAME,...` replays recorded tc runs through them, `--link-repredict`
predicts them closed loop):

  - `bucket_only`: `TbfLink` as it is (the simulator's tc link before `TcpTbfLink`), a change to
    the same rate leaving the bucket as it is;
  - `refill_same_rate`: every change refills the bucket, to the same rate too;
  - `drops`: the qdisc's byte limit drops data segments one at a time; TCP sends a dropped one again
    at its loss probe, then at each retransmission timeout (>= 200 ms, doubling) while the qdisc is
    still full, and the server, reading in order, answers nothing sent after it before it left;
  - `ack_wake_s`: the device's (delayed) ACK of each answer is handed to the qdisc that long after the
    answer, and, like any packet handed over, wakes a packet waiting at the head.

Not modelled: BBR's pacing (its bandwidth estimate mostly keeps the unshaped calibration's tens
of Mbit/s, but falls to the trace's rate at times: `deploy.capture` records it), the client's
HTTP/2 pings that overtake a dropped segment and bring the server's SACK early, the RST_STREAM
packet (79 bytes) the device sends for a request it gives up at its deadline, and why TCP holds a
request behind a waiting segment (its congestion window is not full then).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

TCP_HEADER_BYTES = 66  # Ethernet 14 + IPv4 20 + TCP 20 + timestamps 12
MSS_BYTES = 1448  # 1500-byte MTU less IPv4, TCP and timestamps
VARIANTS = {"bucket_only": True, "refill_same_rate": True, "drops": True, "ack_wake_s": 0.04}  # -> TbfLink


@dataclasses.dataclass(frozen=True)
class WireProfile:
  """Per setup: what the shaper counts for one request on the running link (bytes and packets,
  headers, gRPC framing and the replies' ACKs included)."""

  wire_bytes: np.ndarray
  wire_packets: np.ndarray

  def data_packets(self, i: int) -> list[int]:
    """The request's TCP segments as the shaper counts them (header bytes included): the measured
    bytes less the small packets (ACKs, HTTP/2 control frames), cut at the MSS."""
    total, packets = float(self.wire_bytes[i]), float(self.wire_packets[i])
    payload = max(total - TCP_HEADER_BYTES * packets, 1.0)  # the small packets carry (about) none
    n_data = max(1, math.ceil(payload / MSS_BYTES))
    sizes = [MSS_BYTES] * (n_data - 1) + [payload - MSS_BYTES * (n_data - 1)]
    return [s + TCP_HEADER_BYTES for s in sizes]

  def control_bytes(self, i: int) -> float:
    """Bytes of the small packets a request causes after its answer (ACKs, window updates)."""
    return float(self.wire_bytes[i]) - float(sum(self.data_packets(i)))


class FluidLink:
  """The trace as a fluid FIFO: `send` returns (start, end) of a payload of `bits` ready at t."""

  def __init__(self, trace):
    self.trace, self.free_s = trace, 0.0

  def send(self, ready_s: float, bits: float, setup: int = 0, ack_s: float = 0.0) -> tuple[float, float]:
    start = max(ready_s, self.free_s)
    self.free_s = self.trace.transfer_end(start, bits)
    return start, self.free_s


class TbfLink:
  """The kernel's tbf bucket along a trace, with TCP over it (see the module docstring); `send`
  returns (start, end) of a request of setup `setup` ready at t: when its first packet could leave
  and when its last left."""

  def __init__(self, trace, wire: WireProfile, *, burst_bytes: float = 1600, floor_bps: float = 8000,
               latency_s: float = 0.5, change_lag_s: float = 0.0, rtt_s: float = 0.0,
               sends_every_s: float = 0.0, hz: int = 250, refill_same_rate: bool = False,
               drops: bool = False, ack_wake_s: float | None = None):  # fmt: skip
    self.trace, self.wire, self.burst, self.floor = trace, wire, float(burst_bytes), float(floor_bps)
    self.refill_same, self.drop_data, self.ack_wake = refill_same_rate, drops, ack_wake_s
    self.latency, self.lag = float(latency_s), float(change_lag_s)
    self.every = float(sends_every_s)  # the stream's frame interval (a hand-over per frame)
    self.starts, self.ends, self.rates = trace.segments()
    self.tokens, self.t = self.burst, 0.0  # the bucket at time t (the stream starts on a fresh change)
    self.free_s = 0.0
    self.pending: list[tuple[float, float, bool]] = []  # (time, bytes, probe) of TCP's later packets
    self.queued: list[tuple[float, float]] = []  # (leaves at, bytes) of the packets in the qdisc
    self.srtt, self.rttvar, self.base_rtt = max(rtt_s, 1e-4), max(rtt_s, 1e-4) / 2, rtt_s
    self.probes = self.dropped_probes = self.drops = 0
    self.blocked_until = 0.0  # (`drops`) when the last dropped segment's retransmission left
    self.hz = hz  # the kernel's timer tick (CONFIG_HZ): TCP's timers are whole ticks

  def _step(self, t: float) -> tuple[float, float]:
    """(rate in bytes/s, time of the next change) at time t."""
    local = (t - self.lag) % self.trace.period_s
    i = int(np.searchsorted(self.starts, local, side="right") - 1)
    return max(self.rates[i], self.floor) / 8.0, t - local + self.ends[i]

  def _bucket_at(self, t: float) -> float:
    """Advances the bucket to t (t >= self.t): a change to a new rate in between refills it."""
    rate, change = self._step(self.t)
    while t >= change:
      new, nxt = self._step(change + 1e-12)
      if new != rate or self.refill_same:  # else a change to the same rate leaves the bucket as it is
        self.tokens = self.burst
      else:
        self.tokens = min(self.burst, self.tokens + rate * (change - self.t))
      self.t, rate, change = change, new, nxt
    self.tokens = min(self.burst, self.tokens + rate * (t - self.t))
    self.t = t
    return self.tokens

  def _depart(self, t: float, size: float) -> float:
    """When a packet of `size` bytes handed to the qdisc at t leaves (FIFO). A packet that waits
    leaves when the qdisc's watchdog fires: when the bucket would hold it at the rate of the moment
    it reached the head; a change meanwhile refills the bucket but does not wake the qdisc, the next
    packet handed to it does (the stream's next hand-over, every `sends_every_s`)."""
    head = max(t, self.free_s, self.t)
    tokens = self._bucket_at(head)
    leave = head
    if tokens < size - 1e-9:
      rate, change = self._step(head)
      leave = head + (size - tokens) / rate
      if change < leave:
        leave = self._woken(t, change, leave)
    self._bucket_at(leave)
    self.tokens = max(self.tokens - size, 0.0)
    self.free_s = leave
    return leave

  def _woken(self, t: float, change: float, leave: float) -> float:
    """When a packet handed over at t that waits past a change (at `change`) leaves, given its
    watchdog at `leave`: at the next hand-over, or (`ack_wake_s`) a later ACK handed over."""
    if self.every > 0:
      leave = min(leave, self._next_handover(t, change))
    if change < leave and self.ack_wake is not None:
      leave = min([leave] + [p[0] for p in self.pending if change <= p[0] < leave])
    return leave

  def _next_handover(self, t: float, change: float) -> float:
    """The stream's next hand-over after `change`, as late past its frame's arrival as t was."""
    frame, delay = divmod(t, self.every)
    return max(frame + 1, math.ceil((change - delay) / self.every)) * self.every + delay

  def _enqueue(self, t: float, size: float) -> float:
    """The packet's departure."""
    leave = self._depart(t, size)
    self.queued.append((leave, size))
    return leave

  def _full(self, t: float, size: float) -> bool:
    """Whether the qdisc's byte limit (rate x latency + burst at the rate of the moment) refuses a
    packet of `size` at t."""
    waiting = sum(b for leave, b in self.queued if leave > t)
    return waiting + size > self._step(t)[0] * self.latency + self.burst

  def _retransmit(self, sent: float, size: float, in_flight: int) -> float:
    """(`drops`) The departure of a data segment the full qdisc refused at `sent`: sent again at
    TCP's loss probe, then at each retransmission timeout (doubling) while the qdisc is full."""
    at = sent + self._pto(in_flight)
    rto = max(0.2, self.srtt + 4 * self.rttvar)
    while self._full(at, size):
      self.drops += 1
      at, rto = at + rto, 2 * rto
    return self._enqueue(at, size)

  def _flush(self, until_s: float) -> None:
    """TCP's later packets (ACKs, probes, retransmissions) handed to the qdisc up to until_s."""
    self.pending.sort()
    while self.pending and self.pending[0][0] <= until_s:
      t, size, probe = self.pending.pop(0)
      if probe and self._full(t, size):  # the qdisc drops it; the original is queued anyway
        self.dropped_probes += 1
        continue
      self._enqueue(t, size)

  def control(self, at_s: float, setup: int) -> None:
    """The small packets that follow the answer of a request of `setup` at `at_s`."""
    extra = self.wire.control_bytes(setup)
    if extra > 0:
      self.pending.append((at_s + (self.ack_wake or 0.0), extra, False))

  def send(self, ready_s: float, bits: float, setup: int = 0, ack_s: float = 0.0) -> tuple[float, float]:
    """(start, end) of the request; its ACK comes back `ack_s` after its last byte left."""
    self._flush(ready_s)
    self.queued = [q for q in self.queued if q[0] > ready_s]
    sizes = self.wire.data_packets(setup)
    start = max(ready_s, self.free_s)
    leaves, lost = [], []
    for size in sizes:
      if self.drop_data and self._full(ready_s, size):
        self.drops += 1
        lost.append(size)
      else:
        leaves.append(self._enqueue(ready_s, size))
    if leaves:
      self._tail_probe(ready_s, leaves[-1], sizes, max(ack_s, self.base_rtt))
    for size in lost:  # in-order delivery: this request and every later one wait for it
      self.blocked_until = max(self.blocked_until, self._retransmit(ready_s, size, len(sizes)))
    self._rtt_update([leave - ready_s + self.base_rtt for leave in leaves])  # time in the qdisc + RTT
    return start, max([*leaves, self.blocked_until])

  def _rtt_update(self, samples: list[float]) -> None:
    """TCP's smoothed RTT and its variation after these RTT samples (RFC 6298's gains)."""
    for sample in samples:
      self.rttvar = 0.75 * self.rttvar + 0.25 * abs(sample - self.srtt)
      self.srtt = 0.875 * self.srtt + 0.125 * sample

  def _pto(self, n_packets: int) -> float:
    """TCP's probe timeout for a flight of `n_packets` (Linux, whole timer ticks): 2 srtt + 2 ticks,
    or 2 srtt + 200 ms with one packet out."""
    tick = 1.0 / self.hz
    return math.ceil(2 * self.srtt / tick) * tick + (2 * tick if n_packets > 1 else 0.2)

  def _tail_probe(self, sent: float, end: float, sizes: list, ack_s: float) -> None:
    """TCP's tail loss probe (Linux, in timer ticks): no ACK within 2 srtt + 2 ticks (with one
    packet out, 2 srtt + 200 ms) sends the last segment again, unless that segment is still in the
    qdisc (the kernel does not retransmit a packet its host still queues); the qdisc queues the
    probe (or drops it when full). The ACK comes `ack_s` after the last segment left."""
    pto = self._pto(len(sizes))
    if end <= sent + pto < end + ack_s:
      self.probes += 1
      self.pending.append((sent + pto, sizes[-1], True))


class TcpTbfLink(TbfLink):
  """`TbfLink` with TCP's behaviour on it as the captures show (module docstring): the bucket refilled
  at every change, a request's segments against the byte limit together, a dropped one sent again
  at the loss probe, after the next request or at the timeout, and TCP holding later requests behind
  a segment that waits alone in the qdisc, woken by the server's answers at the deadline."""

  RTO_S = 0.2  # Linux's minimum retransmission timeout
  DELACK_S = 0.04  # Linux's minimum delayed-ACK timeout: the server's ACK of a lone segment

  def __init__(self, *args, deadline_s: float, **kwargs):
    super().__init__(*args, **{**kwargs, "refill_same_rate": True})
    self.deadline, self.wake_at, self.handover_wakes = float(deadline_s), math.inf, False

  def _woken(self, t: float, change: float, leave: float) -> float:
    """A waiting packet leaves at its watchdog or, once a change has refilled the bucket, at the
    next server answer at a deadline, or at the next hand-over when TCP does not hold it."""
    leave = min(leave, self._next_wake(change))
    if self.handover_wakes and self.every:
      leave = min(leave, self._next_handover(t, change))
    return leave

  def _next_wake(self, t: float) -> float:
    """The first server answer at a request's deadline at or after t: this request's, then one per
    later frame (the device keeps handing requests to its socket, each answered at its deadline)."""
    if t <= self.wake_at or not self.every:
      return self.wake_at if t <= self.wake_at else math.inf
    return self.wake_at + math.ceil((t - self.wake_at) / self.every) * self.every

  def send(self, ready_s: float, bits: float, setup: int = 0, ack_s: float = 0.0) -> tuple[float, float]:
    """(start, end) of the request: it starts when TCP hands it to the qdisc."""
    self._flush(ready_s)
    waiting = [leave for leave, _ in self.queued if leave > ready_s]
    start = waiting[0] if len(waiting) == 1 else ready_s  # held behind a segment waiting alone
    self.queued = [q for q in self.queued if q[0] > start]
    self.handover_wakes = bool(self.queued)  # its segments will not wait alone
    self.wake_at = ready_s + self.deadline
    room = self._step(start)[0] * self.latency + self.burst - sum(b for _, b in self.queued)
    leaves, lost = [], []
    for size in self.wire.data_packets(setup):
      room -= size
      if room < 0 and leaves:  # past the byte limit: dropped
        lost.append(size)
      else:
        leaves.append(self._enqueue(start, size))
    if lost:
      again = self._resend_at(ready_s, start, leaves[0], len(leaves) + len(lost))
      leaves += [self._enqueue(again, size) for size in lost]
    self._rtt_samples(start, leaves)
    return start, max(leaves)

  def _resend_at(self, ready_s: float, start: float, first_left: float, n_packets: int) -> float:
    """When TCP sends a dropped tail segment again: at its tail loss probe (2 srtt + 2 ticks after the
    request) when that comes before the server's delayed ACK of the first segment, else once the
    next request has overtaken it (its hand-over plus a round trip: the server's SACK), or at the
    retransmission timeout."""
    probe = start + self._pto(n_packets)
    if probe < first_left + self.DELACK_S + self.base_rtt:
      return probe
    return min(start + (self.every or math.inf) + self.base_rtt, ready_s + self.RTO_S)

  def _rtt_samples(self, start: float, leaves: list[float]) -> None:
    """TCP's RTT samples of a request: each segment's time in the qdisc and the round trip; the
    first of several is acknowledged by the server's delayed ACK when the rest comes later."""
    samples = [leave - start + self.base_rtt for leave in leaves]
    if len(leaves) > 1 and leaves[-1] - leaves[0] > self.DELACK_S:
      samples[0] = max(samples[0], self.DELACK_S + self.base_rtt)
    self._rtt_update(samples)


def replay(link, ready_s, setups, bits, t_srv) -> np.ndarray:
  """Answer times of requests handed over at `ready_s` (setups chosen already) through `link`:
  the last byte's departure plus the setup's server answer time."""
  answers = []
  for t, i in zip(ready_s, setups, strict=True):
    _, end = link.send(float(t), float(bits[i]), int(i), float(t_srv[i]))
    answers.append(end + float(t_srv[i]))
    if hasattr(link, "control"):
      link.control(answers[-1], int(i))
  return np.asarray(answers)
