"""The runtime under load and faults, shortened (`python -m launch.bench deploy --load` is the full
form): concurrent device streams each get exactly their own answers; a stream outlives two
server kills, a link at zero rate and a garbage-sending device on its server, and every frame
is accounted for (ok, late or lost, with its reason). Real server processes on loopback."""

import numpy as np
import pytest

from common.serving import faults

SHAPE = (4, 4, 8)  # 128 payload bytes + 64 bytes of ranges: the smallest wire decoder worth the name


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
  d = tmp_path_factory.mktemp("faults_repo")
  return d, faults.wire_repository(d, SHAPE, 8)


def fleet_settings(repo, model: str, *, cameras: int, frames: int, fps: float, deadline_s: float,
                   trace: str = "markov", link: str = "none") -> list[dict]:  # fmt: skip
  """Each camera's settings for `faults.run_fleet`: the runner's deploy section and what the probe reads."""
  from common.serving import runner

  base = runner.config_section(frames=frames, fps=fps, deadline=deadline_s, trace=trace, link=link).to_dict()
  return [{**base, "camera": j, "repository": str(repo), "model": model} for j in range(cameras)]


def _complete(rec, frames):
  assert rec["frames"] == frames and len(rec["statuses"]) == frames
  assert rec["unaccounted"] == 0 and sum(rec["status"].values()) == frames
  assert rec["wrong"] == 0, rec["wrong_frames"]
  missed = sum(c != "o" for c in rec["statuses"])
  assert rec["deadline_miss_rate"] == pytest.approx(missed / frames)


def test_load_every_request_gets_its_own_answer(repo, tmp_path):
  d, model = repo
  out = faults.run_load(
    d, model, streams=8, seconds=3.0, fps=20.0, deadline_s=5.0, processes=2, workdir=tmp_path
  )
  assert out["frames"] == 8 * 60 and out["unaccounted"] == 0
  assert out["wrong"] == 0 and out["status"] == {"ok": 480, "late": 0, "lost": 0, "refused": 0}, out
  assert out["answered"] == 480
  assert out["server"]["requests"] == 480 and out["server"]["failed"] == 0
  assert 0 < out["p50_ms"] <= out["p99_ms"]


def test_server_killed_and_restarted_twice(repo, tmp_path):
  d, model = repo
  out = faults.run_restarts(d, model, fps=20.0, deadline_s=1.0, up_s=1.0, down_s=0.5, workdir=tmp_path)
  _complete(out, out["frames"])
  assert [e for e, _ in out["events"]] == ["killed", "serving again"] * 2
  assert out["status"]["lost"] >= 2 and out["recoveries"] == 2, out["statuses"]
  assert out["reconnects"] >= 2 and out["statuses"].endswith("o")
  assert set(out["reasons"]) <= {"server unavailable", "StatusCode.UNAVAILABLE", "UNAVAILABLE"}, out[
    "reasons"
  ]


def test_link_at_zero_rate_counts_the_frames_and_goes_on(repo):
  d, model = repo
  out = faults.run_outage(
    d, model, seconds=6.0, fps=20.0, deadline_s=0.5, rate_bps=1e6, start_s=1.0, length_s=3.0
  )
  _complete(out, 120)
  assert out["doomed"] == 50 and out["doomed_missed"] == out["doomed"]
  assert out["status"]["lost"] == 0 and out["status"]["late"] >= out["doomed"]
  arrival = np.arange(120) / 20.0
  ok = np.asarray([c == "o" for c in out["statuses"]])
  assert ok[arrival < 0.9].all() and ok[arrival > 5.0].all(), out["statuses"]


def test_garbage_device_beside_healthy_ones(repo, tmp_path):
  d, model = repo
  out = faults.run_garbage(d, model, streams=3, seconds=3.0, fps=20.0, deadline_s=5.0, workdir=tmp_path)
  assert out["server_alive"] and out["healthy_errors"] == 0 and out["wrong"] == 0
  assert out["status"] == {"ok": 180, "late": 0, "lost": 0, "refused": 0}, out
  g = out["garbage"]
  assert {"not protobuf", "flipped bytes", "wrong fields", "oversize", "raw tcp"} <= set(g), g
  assert "OK" not in g["not protobuf"] and "OK" not in g["wrong fields"] and "OK" not in g["oversize"]
  assert out["server"]["failed"] > 0


# ---------------------------------------------------------------- faults of a fleet (issue 31, item 6)
# Three device processes (`python -m common.serving.runner`, the fleet's own machinery: barriers,
# a record per camera) against one server; every frame of every camera must be accounted for.

FLEET, FRAMES = 3, 60


def _fleet_complete(out, frames=FRAMES):
  assert out["frames"] == FLEET * frames and sum(out["status"].values()) == FLEET * frames, out["status"]
  assert out["unaccounted"] == 0 and out["wrong"] == 0
  assert [len(c["statuses"]) for c in out["cameras"]] == [frames] * FLEET


def test_fleet_camera_killed_mid_stream(repo, tmp_path):
  d, model = repo
  devs = fleet_settings(d, model, cameras=FLEET, frames=FRAMES, fps=20.0, deadline_s=1.0)
  out = faults.run_fleet(d, model, devs, workdir=tmp_path, kill=1, kill_after_s=1.0)
  _fleet_complete(out)
  assert out["failed"] == [1] and "exit status -9" in out["cameras"][1]["failed"]
  assert out["status"] == {"ok": 2 * FRAMES, "late": 0, "lost": FRAMES, "refused": 0}, out["cameras"]
  assert [e[0] for e in out["events"]] == ["camera killed"]


def test_fleet_switch_that_refuses_everything(repo, tmp_path):
  d, model = repo
  devs = fleet_settings(d, model, cameras=FLEET, frames=FRAMES, fps=20.0, deadline_s=1.0)
  out = faults.run_fleet(d, model, devs, workdir=tmp_path, switch=f"{model}=1,1,0,50")  # m = 0: closed
  _fleet_complete(out)
  assert out["status"] == {"ok": 0, "late": 0, "lost": 0, "refused": FLEET * FRAMES}, out["cameras"]
  assert all(set(c["reasons"]) == {"RESOURCE_EXHAUSTED"} for c in out["cameras"])


def test_fleet_trace_at_zero_longer_than_the_deadline(repo, tmp_path):
  d, model = repo
  trace = tmp_path / "outage.csv"  # 2 Mbit/s, nothing in [1.0, 2.5) s, 2 Mbit/s again
  trace.write_text("time_s,mbps\n0,2\n1.0,0\n2.5,2\n3.0,2\n3.5,2\n")
  devs = fleet_settings(
    d, model, cameras=FLEET, frames=FRAMES, fps=20.0, deadline_s=0.5, trace=str(trace), link="pacer"
  )
  out = faults.run_fleet(d, model, devs, workdir=tmp_path / "run")
  _fleet_complete(out)
  arrival = np.arange(FRAMES) / 20.0
  doomed = (arrival >= 1.0) & (arrival + 0.5 < 2.5)  # arrive in the outage, their deadline ends in it
  for c in out["cameras"]:
    st = np.asarray(list(c["statuses"]))
    assert (st[doomed] == "L").all() and (st[arrival < 0.9] == "o").all(), c["statuses"]
    assert c["statuses"].endswith("o") and c["status"]["lost"] == 0


def test_fleet_server_restarted_while_streaming(repo, tmp_path):
  d, model = repo
  # 8 s of frames: the restarted server (a fresh interpreter) and the clients' backoff must be back
  # well before the end even on a loaded machine, so that the last frames are answered
  devs = fleet_settings(d, model, cameras=FLEET, frames=160, fps=20.0, deadline_s=1.0)
  out = faults.run_fleet(d, model, devs, workdir=tmp_path, restart_after_s=0.8, down_s=0.5)
  _fleet_complete(out, 160)
  assert [e[0] for e in out["events"]] == ["server killed", "serving again"] and not out["failed"]
  for c in out["cameras"]:
    assert c["status"]["lost"] >= 2 and c["reconnects"] >= 1 and c["statuses"].endswith("o"), c
