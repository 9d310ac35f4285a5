"""The simulator's models of the tc link against recorded tc runs' per-frame times.

`data/tc_run_att.json`: one coinfer deploy over the kernel's tc link (the command is in the file),
recorded while the shaper's changes landed about 7 ms after their steps, per frame the setup, the
hand-over to the link and the measured latency, with the wire profile the run calibrated and the
trace's rates. Replaying the same hand-overs and setups through `linkmodel.TbfLink` (the bucket
alone) must give each frame's latency within TOL_MS at the median, agree on which frames met the
deadline for at least AGREE of them, and the miss rate within MISS_GAP.
`data/tc_run_att_capture.json`: the same kind of run recorded with the changes on their steps (and
a packet capture, not stored here), which `linkmodel.TcpTbfLink`, the simulator's tc link, must
reproduce (tighter bounds) and the bucket alone does not.
"""

import json
from pathlib import Path

import numpy as np
import pytest

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


CAPTURED = Path(__file__).parent / "data" / "tc_run_att_capture.json"
CAPTURED_AGREE, CAPTURED_MISS_GAP = 0.97, 0.02


def _links(fix: dict) -> tuple:
  """(TcpTbfLink, TbfLink) for a fixture's wire profile and trace."""
  tr, w = fix["trace"], fix["wire"]
  trace = Trace("att", np.asarray(tr["times_s"]), np.asarray(tr["rates_bps"]), tr["period_s"])
  wire = linkmodel.WireProfile(np.asarray(w["wire_bytes"]), np.asarray(w["wire_packets"]))
  kw = dict(burst_bytes=w["burst_bytes"], floor_bps=w["floor_bps"], latency_s=w["latency_ms"] / 1e3,
            change_lag_s=w["change_lag_s"], rtt_s=fix["rtt_s"], sends_every_s=1.0 / fix["fps"])  # fmt: skip
  return linkmodel.TcpTbfLink(trace, wire, deadline_s=fix["deadline_s"], **kw), linkmodel.TbfLink(
    trace, wire, **kw
  )


def test_tcp_model_reproduces_a_tc_run_recorded_with_the_changes_on_their_steps():
  """`data/tc_run_att_capture.json` (the shaper landing each change on its step, a packet capture
  beside it): TcpTbfLink within TOL_MS at the median, the same side of the deadline for at least
  CAPTURED_AGREE of the frames, the miss rate within CAPTURED_MISS_GAP; the bucket alone (a change
  to the same rate refilling nothing, no TCP) misses it."""
  fix = json.loads(CAPTURED.read_text())
  dl = fix["deadline_s"]
  tcp, bucket = _links(fix)
  for link, ok in ((tcp, True), (bucket, False)):
    measured, predicted = _replay(fix, link)
    answered = np.isfinite(measured)
    err_ms = np.abs(measured[answered] - predicted[answered]) * 1e3
    agree = np.mean((measured <= dl) == (predicted <= dl))
    gap = abs(np.mean(measured > dl) - np.mean(predicted > dl))
    fits = np.median(err_ms) <= TOL_MS and agree >= CAPTURED_AGREE and gap <= CAPTURED_MISS_GAP
    assert fits == ok, (type(link).__name__, np.percentile(err_ms, [50, 90]), agree, gap)


def _floor_then_fast(rtt_s: float) -> linkmodel.TcpTbfLink:
  """A zero-rate step (the 8 kbit/s floor: 1000 B/s, limit 1000 x 0.5 + 1600 = 2100 B) for 0.1 s,
  then 800 kbit/s; requests of two 1514-B segments, one a frame (0.1 s), deadline 0.2 s."""
  trace = Trace("up", np.asarray([0.0, 0.1]), np.asarray([0.0, 800e3]), 10.0)
  wire = linkmodel.WireProfile(np.asarray([2 * 1514.0]), np.asarray([2.0]))
  return linkmodel.TcpTbfLink(trace, wire, burst_bytes=1600, floor_bps=8000, rtt_s=rtt_s,
                              sends_every_s=0.1, deadline_s=0.2)  # fmt: skip


def test_a_dropped_segment_goes_again_after_the_next_request_or_at_the_loss_probe():
  """Hand-computed. The two segments meet the 2100-B limit together: the first leaves at 0 s (the
  bucket holds 1600 B), the second is dropped. With a 40-ms round trip the loss probe (2 x 40 ms
  rounded up to the 4-ms tick, + 2 ticks = 88 ms) comes after the server's delayed ACK (40 ms + the
  round trip = 80 ms): the segment goes again when the next request has overtaken it, 0.1 + 0.04 s,
  and leaves at once (the change at 0.1 s refilled the bucket). With no round trip the probe (12 ms)
  comes first: the segment waits in the qdisc at the floor rate (its watchdog at 1.428 s), the
  change wakes nothing, the next request is held behind it, and the server's answer at the
  deadline (0.2 s) wakes it."""
  overtaken = _floor_then_fast(0.04)
  assert overtaken.send(0.0, 0.0, 0) == (0.0, pytest.approx(0.14))
  probed = _floor_then_fast(0.0)
  assert probed.send(0.0, 0.0, 0) == (0.0, pytest.approx(0.2))
  start, _ = probed.send(0.1, 0.0, 0)
  assert start == pytest.approx(0.2)
