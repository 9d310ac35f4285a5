"""Stream simulator: frames through device compute, a trace-driven uplink and the server.

Frame k arrives at k / fps. The device computes its setup (serially), the payload joins the
FIFO uplink, transmits at the trace's bandwidth, and the server finishes it (in parallel).
Latency is finish minus arrival; the frame meets its deadline when latency <= T. Whether the
frame is classified correctly comes from a per-setup correctness matrix (the SW-CNN on test
images, cycled) or, without one, a Bernoulli draw with the setup's accuracy.
"""

from __future__ import annotations

import numpy as np

from coinfer import compress
from coinfer import controller as C
from coinfer.controller import ControlState, Profile
from common import linkmodel
from common.traces import Trace


def controllers(prof: Profile, trace: Trace, s) -> dict:
  """The controllers of the simulate step, from the config's `stream` section `s`."""
  front = compress.pareto_front(prof.bits, prof.accuracy, prof.t_dev + prof.t_srv)
  return {
    "mpc": C.make_mpc(
      prof, s.horizon, fps=s.fps, deadline_s=s.deadline_s, history=s.history, margin=s.margin, method=s.method
    ),
    "fixed": C.make_fixed(front[len(front) // 2]),
    "rate": C.make_rate_based(prof, fps=s.fps, history=s.history),
    "buffer": C.make_buffer_based(prof, fps=s.fps, deadline_s=s.deadline_s, history=s.history),
    "oracle": C.make_oracle(prof, trace, fps=s.fps, deadline_s=s.deadline_s),
  }


class Delivered:
  """What a device behind a paced link sees (the pacer and the simulator's fluid link): the bits not
  yet delivered, and a throughput sample at the end of every transfer."""

  def __init__(self, trace):
    self.trace = trace
    self.done: list[tuple[float, float]] = []  # (visible at, throughput)
    self.inflight: list[tuple[float, float, float]] = []  # (start, end, bits)

  def observe(self, now: float, history: int) -> tuple[float, tuple, tuple]:
    """(backlog bits, the last `history` samples, (bits, seconds so far) of the running transfer)."""
    tr = self.trace
    backlog = sum(bits - tr.bits_between(s, now) for s, e, bits in self.inflight if e > now and s < now)
    backlog += sum(bits for s, e, bits in self.inflight if s >= now)
    self.inflight = [f for f in self.inflight if f[1] > now]
    running = [(bits, now - s) for s, e, bits in self.inflight if s < now]
    seen = tuple(tp for t, tp in self.done if t <= now)[-history:]
    return float(max(backlog, 0.0)), seen, running[0] if running else (0.0, 0.0)

  def record(self, sent: float, start: float, end: float, bits: float, answer: float, expiry: float) -> None:
    self.inflight.append((start, end, bits))
    self.done.append((end, bits / max(end - start, 1e-9)))
    self.done = self.done[-200:]


GIVE_UP_AFTER_S = 1e-6  # a request given up at its deadline leaves the view this long after it


class Answered:
  """What a device behind an unpaced link sees (tc, `common.serving.device.Ledger`): the bits sent
  and not yet answered (or given up at the deadline), and a throughput sample per answer, the
  transfer taken to end at the answer less a round trip (the server's compute is in the profile's
  answer time, and the device subtracts it), the transfers in order. A request given up at its
  deadline leaves the view `GIVE_UP_AFTER_S` after it, as on the runtime, whose gRPC deadline
  callback (`Ledger.answered`, its time in the record's `closed_s`) comes after the decision of a
  frame that arrives at that instant."""

  def __init__(self, rtt_s: float = 0.0):
    self.rtt_s = rtt_s
    self.samples: list[tuple[float, float]] = []  # (visible at, throughput)
    self.unanswered: list[tuple[float, float, float, float]] = []  # (completes at, bits, sent, tx end)
    self.tx_end = 0.0
    self.known_tx_end = 0.0  # the latest transfer end the answers so far tell (the Ledger's tx_end)

  def observe(self, now: float, history: int) -> tuple[float, tuple, tuple]:
    """(unanswered bits, the last `history` samples, (bits, seconds so far) of the oldest
    unanswered transfer: from its send or the last known transfer end, less a round trip)."""
    for done, _, _, tx_end in self.unanswered:
      if done <= now:
        self.known_tx_end = max(self.known_tx_end, tx_end)
    self.unanswered = [u for u in self.unanswered if u[0] > now]
    seen = tuple(tp for t, tp in self.samples if t <= now)[-history:]
    pending = (0.0, 0.0)
    if self.unanswered:
      _, bits, sent, _ = self.unanswered[0]
      seconds = now - self.rtt_s - max(sent, self.known_tx_end)
      pending = (bits, seconds) if seconds > 0 else pending
    return float(sum(u[1] for u in self.unanswered)), seen, pending

  def record(self, sent: float, start: float, end: float, bits: float, answer: float, expiry: float) -> None:
    # given up at its deadline, a request leaves the view just after it: the runtime's deadline
    # callback comes after the decision of a frame arriving at that instant (frame k + 2's, when the
    # deadline is two frame intervals)
    done = answer if answer <= expiry else expiry + GIVE_UP_AFTER_S
    tx_end = (answer if answer <= expiry else expiry) - self.rtt_s
    self.unanswered.append((done, bits, sent, tx_end))
    first = max(sent, self.tx_end)
    self.tx_end = max(tx_end, self.tx_end)
    if tx_end > first:
      self.samples.append((done, bits / (tx_end - first)))
      self.samples = self.samples[-200:]


_FRAME_KEYS = ("setup", "latency_s", "met", "correct", "queue_s")


def run(
  controller: C.Controller,
  trace: Trace,
  *,
  profile: Profile,
  fps: float = 10.0,
  deadline_s: float = 0.2,
  frames: int = 600,
  correct: np.ndarray | None = None,
  seed: int = 0,
  history: int = 11,
  link=None,
  rtt_s: float = 0.0,
  answer_s=None,
) -> dict:
  """Runs `frames` frames and returns per-frame arrays and the summary.

  Args:
    controller: a Controller; its state is threaded through the frames.
    trace: the uplink bandwidth.
    profile: payload bits, accuracy and compute times per setup.
    correct: optional [S, N] bool, frame k of setup s is correct iff correct[s, k % N].
    history: throughput samples kept for the controller.
    link: the uplink's model (`common.linkmodel`): None is the trace as a fluid FIFO, seen as the
      pacer's device sees it; a `TcpTbfLink` (or `TbfLink`) is the kernel's tc link, seen as its
      device sees it (throughputs and backlog from the answers, less the round trip `rtt_s`).
    answer_s: optional per setup a list of server answer times (the calibration's): each frame's
      answer time is drawn from its setup's (seeded by `seed`) instead of `profile.t_srv`.

  Returns:
    {"setup", "latency_s", "met", "correct", "queue_s"} arrays (queue_s: from the payload's
    hand-over to its last byte leaving) and "summary": accuracy (correct), expected_accuracy (mean
    accuracy of the chosen setups, free of sampling noise), timely_accuracy (correct and on time),
    deadline_miss_rate, mean and p95 latency, and the controller's fallbacks; "controller_state".
  """
  rng, paced, device_free, dt = np.random.default_rng(seed), link is None, 0.0, 1.0 / fps
  link = linkmodel.FluidLink(trace) if paced else link
  view = Delivered(trace) if paced else Answered(rtt_s)
  out = {k: np.zeros(frames) for k in _FRAME_KEYS}
  ctl_state = controller.init()
  for k in range(frames):
    now = k * dt
    backlog, seen, pending = view.observe(now, history)
    i, ctl_state = controller.update(ControlState(k, now, backlog, seen, link.free_s, pending), ctl_state)
    i = int(i)
    ready = device_free = max(now, device_free) + profile.t_dev[i]
    t_srv = float(rng.choice(answer_s[i])) if answer_s else profile.t_srv[i]
    start, end = link.send(ready, profile.bits[i], i, t_srv)
    answer = end + t_srv
    view.record(ready, start, end, profile.bits[i], answer, now + deadline_s)
    if not paced:
      link.control(answer, i)
    ok = bool(correct[i, k % correct.shape[1]]) if correct is not None else rng.random() < profile.accuracy[i]
    for key, v in zip(
      _FRAME_KEYS, (i, answer - now, answer - now <= deadline_s, ok, end - ready), strict=True
    ):
      out[key][k] = v
  out["summary"] = _summary(out, profile, ctl_state)
  out["controller_state"] = ctl_state
  return out


def _summary(out: dict, profile: Profile, ctl_state) -> dict:
  lat = out["latency_s"]
  return {
    "accuracy": float(out["correct"].mean()),
    "expected_accuracy": float(profile.accuracy[out["setup"].astype(int)].mean()),
    "timely_accuracy": float((out["correct"] * out["met"]).mean()),
    "deadline_miss_rate": float(1.0 - out["met"].mean()),
    "mean_latency_s": float(lat.mean()),
    "p95_latency_s": float(np.percentile(lat, 95)),
    "mean_queue_s": float(out["queue_s"][out["met"] > 0].mean()) if out["met"].any() else 0.0,
    "fallbacks": int(ctl_state.fallbacks),
  }
