"""The simulator's model of the tc link against a recorded tc run's per-frame times.

`data/tc_run_att.json`: one coinfer deploy over the kernel's tc link (the command is in the file),
per frame the setup, the hand-over to the link and the measured latency, with the wire profile the
run calibrated and the trace's rates. Replaying the same hand-overs and setups through
`linkmodel.TbfLink` must give each frame's latency within TOL_MS at the median, agree on which
frames met the deadline for at least AGREE of them, and the miss rate within MISS_GAP.
"""

import json
from pathlib import Path

import numpy as np

from common import linkmodel
from common.traces import Trace

FIXTURE = Path(__file__).parent / "data" / "tc_run_att.json"
TOL_MS, AGREE, MISS_GAP = 5.0, 0.93, 0.05


def _replay(fix: dict, link=None) -> tuple[np.ndarray, np.ndarray]:
  tr = fix["trace"]
  trace = Trace("att", np.asarray(tr["times_s"]), np.asarray(tr["rates_bps"]), tr["period_s"])
  p, f = fix["profile"], fix["frames"]
  w = fix["wire"]
  wire = linkmodel.WireProfile(np.asarray(w["wire_bytes"]), np.asarray(w["wire_packets"]))
  link = link or linkmodel.TbfLink(
    trace,
    wire,
    burst_bytes=w["burst_bytes"],
    floor_bps=w["floor_bps"],
    latency_s=w["latency_ms"] / 1e3,
    change_lag_s=w["change_lag_s"],
    rtt_s=fix["rtt_s"],
    sends_every_s=1.0 / fix["fps"],
  )
  answers = linkmodel.replay(link, f["ready_s"], f["setup"], p["bits"], p["t_srv"])
  measured = np.asarray([np.inf if x is None else x for x in f["latency_s"]])
  return measured, answers - np.asarray(f["arrival_s"])


def test_tbf_model_reproduces_the_recorded_tc_run_frame_by_frame():
  fix = json.loads(FIXTURE.read_text())
  measured, predicted = _replay(fix)
  dl = fix["deadline_s"]
  answered = np.isfinite(measured)
  err_ms = np.abs(measured[answered] - predicted[answered]) * 1e3
  assert np.median(err_ms) <= TOL_MS, np.percentile(err_ms, [50, 90])
  assert np.mean((measured <= dl) == (predicted <= dl)) >= AGREE
  assert abs(np.mean(measured > dl) - np.mean(predicted > dl)) <= MISS_GAP


def test_fluid_link_misses_the_recorded_tc_run():
  """The trace as a fluid FIFO (the pacer's model) does not reproduce the kernel's link: the test
  above can tell the two apart."""
  fix = json.loads(FIXTURE.read_text())
  tr = fix["trace"]
  trace = Trace("att", np.asarray(tr["times_s"]), np.asarray(tr["rates_bps"]), tr["period_s"])
  measured, predicted = _replay(fix, linkmodel.FluidLink(trace))
  answered = np.isfinite(measured)
  assert np.median(np.abs(measured[answered] - predicted[answered])) * 1e3 > TOL_MS


def test_a_request_within_the_burst_leaves_at_once_and_the_rest_at_the_rate():
  """Hand-computed: 80 kbit/s (10 kB/s), burst 1600 B, no change for 10 s: a 1514-B packet leaves at
  once, the next 1514 B wait (1514 - 86) / 10000 s."""
  trace = Trace("flat", np.asarray([0.0]), np.asarray([80e3]), 10.0)
  wire = linkmodel.WireProfile(np.asarray([2 * 1514.0]), np.asarray([2.0]))
  link = linkmodel.TbfLink(trace, wire, burst_bytes=1600, floor_bps=8000)
  start, end = link.send(0.0, 8 * 2000.0, 0)
  assert start == 0.0
  assert abs(end - (1514 - 86) / 10000) < 1e-9


def _two_setups(trace, **variant):
  """Setup 0: two 1514-B segments; setup 1: one 1514-B segment and 66 B of ACKs after its answer."""
  wire = linkmodel.WireProfile(np.asarray([2 * 1514.0, 1580.0]), np.asarray([2.0, 2.0]))
  return linkmodel.TbfLink(trace, wire, burst_bytes=1600, floor_bps=8000, **variant)


def test_refill_same_rate_refills_the_bucket_at_a_change_to_the_same_rate():
  """Hand-computed: 80 kbit/s with a change to 80 kbit/s at 0.1 s. The first request's second segment
  leaves at 0.1428 s either way; with the refill at 0.1 the bucket then holds 86 B, and a 1514-B
  segment handed over at 0.15 s waits (1514 - 86 - 72) / 10000 s; without it, 0 B + 72 B."""
  trace = Trace("flat", np.asarray([0.0, 0.1]), np.asarray([80e3, 80e3]), 10.0)
  for variant, tokens in (({"refill_same_rate": True}, 86.0), ({}, 0.0)):
    link = _two_setups(trace, **variant)
    assert abs(link.send(0.0, 0.0, 0)[1] - 0.1428) < 1e-9
    assert abs(link.send(0.15, 0.0, 1)[1] - (0.15 + (1514 - tokens - 72) / 10000)) < 1e-9


def test_ack_wake_lets_a_later_ack_wake_the_packet_waiting_at_the_head():
  """Hand-computed: 80 kbit/s, then 800 kbit/s from 0.05 s (the change refills, wakes nothing). The
  second segment would leave at its watchdog, 0.1428 s; an answer at 0.03 s whose delayed ACK is
  handed over 40 ms later wakes the qdisc at 0.07 s, when the refilled bucket holds it."""
  trace = Trace("up", np.asarray([0.0, 0.05]), np.asarray([80e3, 800e3]), 10.0)
  for variant, end in (({"ack_wake_s": 0.04}, 0.07), ({}, 0.1428)):
    link = _two_setups(trace, **variant)
    link.control(0.03, 1)
    assert abs(link.send(0.0, 0.0, 0)[1] - end) < 1e-9


def test_drops_send_a_refused_segment_again_and_hold_later_requests_behind_it():
  """80 kbit/s and a 50-ms queue: the limit is 10000 x 0.05 + 1600 = 2100 B. A second request handed
  over while 1514 B still wait is refused whole; TCP sends its segments again at the loss probe or
  later, and a third request, though its own segment fits, is answered no earlier (in order)."""
  trace = Trace("flat", np.asarray([0.0]), np.asarray([80e3]), 10.0)
  link = _two_setups(trace, drops=True)
  link.latency = 0.05
  link.send(0.0, 0.0, 0)
  _, end2 = link.send(0.01, 0.0, 0)
  assert link.drops >= 2 and end2 >= 0.01 + 0.2  # the queue is still full at the probe: an RTO later
  _, end3 = link.send(0.5, 0.0, 1)
  assert end3 >= end2
  plain = _two_setups(trace)
  plain.latency = 0.05
  plain.send(0.0, 0.0, 0)
  assert abs(plain.send(0.01, 0.0, 0)[1] - (0.1428 + 2 * 0.1514)) < 1e-9  # queued, never dropped


def test_replay_variants_are_named_and_a_stale_recording_is_refused(tmp_path):
  import pytest

  from common.errors import ConfigError, ServingError
  from launch.benchmarks import links

  assert links.variants("drops,ack_wake_s") == {"drops": True, "ack_wake_s": 0.04}
  with pytest.raises(ConfigError, match="unknown \\['bogus'\\]"):
    links.variants("drops,bogus")
  run = tmp_path / "links" / "att_tc_mpc_0"
  run.mkdir(parents=True)
  (run / "device_spec.json").write_text(json.dumps({"settings": {}, "workdir": str(tmp_path)}))
  (run / "device.json").write_text(json.dumps({"summary": {"deadline_miss_rate": 0.1}}))
  with pytest.raises(ServingError, match="recorded before the figures"):
    links.repredict(tmp_path / "links")
