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
