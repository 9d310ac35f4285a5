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
    "buffer": C.make_buffer_based(prof, deadline_s=s.deadline_s, history=s.history),
    "oracle": C.make_oracle(prof, trace, fps=s.fps, deadline_s=s.deadline_s),
  }


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
) -> dict:
  """Runs `frames` frames and returns per-frame arrays and the summary.

  Args:
    controller: a Controller; its state is threaded through the frames.
    trace: the uplink bandwidth.
    profile: payload bits, accuracy and compute times per setup.
    correct: optional [S, N] bool, frame k of setup s is correct iff correct[s, k % N].
    history: throughput samples kept for the controller.

  Returns:
    {"setup", "latency_s", "met", "correct"} arrays and "summary": accuracy (correct),
    expected_accuracy (mean accuracy of the chosen setups, free of sampling noise),
    timely_accuracy (correct and on time), deadline_miss_rate, mean and p95 latency, and the
    controller's fallbacks; "controller_state": its final state.
  """
  rng = np.random.default_rng(seed)
  dt = 1.0 / fps
  device_free = 0.0
  link_free = 0.0
  done: list[tuple[float, float]] = []  # (finish time, throughput) of transfers
  inflight: list[tuple[float, float, float]] = []  # (start, end, bits)
  out = {k: np.zeros(frames) for k in ("setup", "latency_s", "met", "correct")}
  ctl_state = controller.init()
  for k in range(frames):
    now = k * dt
    backlog = sum(bits - trace_bits(trace, s, now) for s, e, bits in inflight if e > now and s < now)
    backlog += sum(bits for s, e, bits in inflight if s >= now)
    inflight = [f for f in inflight if f[1] > now]
    seen = tuple(tp for t, tp in done if t <= now)[-history:]
    state = ControlState(k, now, float(max(backlog, 0.0)), seen, link_free)
    i, ctl_state = controller.update(state, ctl_state)
    i = int(i)
    ready = max(now, device_free) + profile.t_dev[i]
    device_free = ready
    start = max(ready, link_free)
    end = trace.transfer_end(start, profile.bits[i])
    link_free = end
    inflight.append((start, end, profile.bits[i]))
    done.append((end, profile.bits[i] / max(end - start, 1e-9)))
    done = done[-(4 * history + 8) :]
    latency = end + profile.t_srv[i] - now
    if correct is not None:
      ok = bool(correct[i, k % correct.shape[1]])
    else:
      ok = bool(rng.random() < profile.accuracy[i])
    out["setup"][k], out["latency_s"][k] = i, latency
    out["met"][k], out["correct"][k] = latency <= deadline_s, ok
  lat = out["latency_s"]
  out["summary"] = {
    "accuracy": float(out["correct"].mean()),
    "expected_accuracy": float(profile.accuracy[out["setup"].astype(int)].mean()),
    "timely_accuracy": float((out["correct"] * out["met"]).mean()),
    "deadline_miss_rate": float(1.0 - out["met"].mean()),
    "mean_latency_s": float(lat.mean()),
    "p95_latency_s": float(np.percentile(lat, 95)),
    "fallbacks": int(ctl_state.fallbacks),
  }
  out["controller_state"] = ctl_state
  return out


def trace_bits(trace: Trace, start_s: float, until_s: float) -> float:
  """Bits the link delivers between start_s and until_s (numeric integral of the piecewise rate)."""
  if until_s <= start_s:
    return 0.0
  starts, ends, rates = trace.segments()
  total, t = 0.0, start_s
  while t < until_s:
    local = t % trace.period_s
    base = t - local
    i = int(np.searchsorted(starts, local, side="right") - 1)
    seg_end = min(base + ends[i], until_s)
    total += (seg_end - t) * rates[i]
    t = seg_end if seg_end > t else t + 1e-12
  return total
