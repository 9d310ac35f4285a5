"""offload on the serving runtime: a server process, a device process, the loss beside the simulator's;
a fleet of camera processes behind the server's switch (refusals, a camera that dies, bad keys)."""

import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from common.errors import CheckpointError, ConfigError
from offload import deploy as odeploy
from offload import deploy_report, fleet, pipeline
from offload.configs import quick


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
  """The smallest offload run with exports: 1 classifier epoch, an untrained DQN, short pools."""
  workdir = tmp_path_factory.mktemp("offload_deploy")
  c = quick.get_config("deploy")
  pipeline.run_steps(pipeline.ALL, c, workdir, show_progress=False)
  return workdir


def test_runtime_loss_matches_the_simulator_on_the_same_stream(tiny_run, tmp_path):
  """One test (one fixture on one worker): the deploy, then the user errors on the same run."""
  out = tiny_run / "deploy"
  c = quick.get_config("deploy")  # the deploy step, Markov-modulated arrivals
  c.deploy.update(frames=300, fps=200.0, deadline=2.0, arrivals="markov", stream_seed=3)
  figures = pipeline.run_steps(["deploy"], c, tiny_run, show_progress=False)["deploy"]
  assert set(figures) >= {"report", "mdp_loss", "mdp_sim_loss", "dqn_loss", "dqn_sim_loss"}
  summary = json.loads((out / "summary.json").read_text())
  assert set(summary["gap"]) == {"mdp", "dqn"}
  for pol, gap in summary["gap"].items():
    m, s = summary["measured"][pol], summary["simulator"][pol]
    assert gap <= deploy_report.TOLERANCE, (pol, m["loss"], s["loss"])
    assert m["offload_fraction"] == pytest.approx(s["offload_fraction"], abs=1 / 300)
    assert m["offload_fraction"] < 1 and m["status"]["lost"] == 0
  assert max(summary["measured"][p]["offload_fraction"] for p in ("mdp", "dqn")) > 0  # the server was used
  assert summary["export"]["strong_top1_agreement"] == 1.0
  rec = json.loads((out / "device.json").read_text())["policies"]["mdp"]
  iv, t = np.asarray(rec["frames"]["interval"]), np.asarray(rec["frames"]["arrival_s"])
  assert iv.min() >= 1 and iv.max() >= 3  # Markov-modulated intervals (interval_state1 = 3 slots)
  np.testing.assert_allclose(np.diff(t), iv[:-1] / 200, atol=1e-9)  # the frames arrived after them
  pol = max(summary["measured"], key=lambda p: summary["measured"][p]["offload_fraction"])
  fr = json.loads((out / "device.json").read_text())["policies"][pol]["frames"]
  sent = [b for b, s in zip(fr["wire_bytes"], fr["sent"], strict=True) if s]
  assert min(sent) > 32 * 32 * 3 * 4 and sum(fr["wire_bytes"]) == sum(sent)  # only offloads travel
  text = (out / "report.md").read_text()
  for word in ("simulator, same stream", "latency_cdf.png", "loss_vs_simulator.png", "bytes per frame"):
    assert word in text
  dep = odeploy.load(tiny_run)
  with pytest.raises(ConfigError, match="config.deploy.setting = 1"):
    odeploy.make_policy(dep, "dqn", 1)
  with pytest.raises(ConfigError, match="config.deploy.policy = 'greedy'"):
    odeploy.make_policy(dep, "greedy", 0)
  (tmp_path / "config.json").write_text(json.dumps({"metrics": {"source": "synthetic"}, "seed": 0}))
  with pytest.raises(ConfigError, match="source 'digits'"):
    odeploy.load(tmp_path)


def _kill_camera_when_streaming(out: Path, strategy: str, camera: int, after_s: float, fps: float):
  """A thread that SIGKILLs `camera`'s process `after_s` into the fleet's `strategy` stream."""

  def go():
    sync = out / "fleet"
    t_end = time.monotonic() + 600
    while not (sync / f"{strategy}.go").exists() and time.monotonic() < t_end:
      time.sleep(0.01)
    pl = json.loads((out / fleet.PLAN_FILE).read_text())
    start = fleet.start_time(float((sync / f"{strategy}.go").read_text()), pl, fps)
    time.sleep(max(start + after_s - time.monotonic(), 0.0))
    os.kill(int((sync / f"{strategy}.{camera}.ready").read_text()), signal.SIGKILL)

  t = threading.Thread(target=go, daemon=True)
  t.start()
  return t


def _sending(plan):
  """The fleet's plan with every strategy's thresholds at the test metrics' median for n >= p: the
  tiny run's MDP never offloads (its one-epoch classifiers leave nothing to gain), this one does."""

  def wrapped(c, data, workdir, settings):
    pl = plan(c, data, workdir, settings)
    low = float(np.median(data.test.metrics))
    for st in pl["strategies"].values():
      p = pl["switch"][1] if st["smart"] else st["qpm"][1]
      st["threshold"] = [None if n < p else low for n in range(len(st["threshold"]))]
    return pl

  return wrapped


def test_a_fleet_through_the_switch_refusals_and_a_camera_that_dies(tiny_run, tmp_path, monkeypatch):
  """Two camera processes against one server enforcing the switch: the hierarchical strategy needs
  the multicam step, whose grid here holds one point, (r_i, b_i) = (0.3, 3), three times the
  share's rate, so that the switch must refuse; then all three strategies, camera 1 killed in the
  middle of the second (the third's barrier must not wait for it). The plan (written for the
  devices and read back by the simulator) offloads half the images."""
  monkeypatch.setattr(fleet, "plan", _sending(fleet.plan))
  out = tmp_path / "fleet"
  c = quick.get_config("deploy")
  c.multicam.grid_rates, c.multicam.grid_depths = (0.3,), (3.0,)
  c.deploy.update(cameras=2, frames=100, fps=50.0, deadline=2.0, link="none", out=str(out))
  if not (tiny_run / "multicam.json").exists():
    with pytest.raises(CheckpointError, match="multicam.json is missing"):
      pipeline.run_steps(["deploy"], c, tiny_run, show_progress=False)
    assert not out.exists()  # refused before anything was written
    pipeline.run_steps(["multicam"], c, tiny_run, show_progress=False)
  killer = _kill_camera_when_streaming(out, "hierarchical", 1, 0.6, 50.0)
  figures = pipeline.run_steps(["deploy"], c, tiny_run, show_progress=False)["deploy"]
  killer.join(1.0)
  assert figures["failed_cameras"] == 1
  summary = json.loads((out / "summary.json").read_text())
  assert set(summary["measured"]) == set(fleet.STRATEGIES) and "1" in summary["failed_cameras"]
  assert all(g is None for g in summary["gap"].values())  # no gap claimed without every camera
  dev0 = json.loads((out / "device_0.json").read_text())["strategies"]
  for s, m in summary["measured"].items():
    assert sum(m["status"].values()) == m["frames"] == 200, (s, m["status"])  # every frame counted
    assert m["status"]["lost"] >= 100 and m["cameras_finished"] == 1
    fr = dev0[s]["frames"]
    refused = np.asarray(fr["status"]) == "refused"
    assert (np.asarray(fr["sent"], bool) | ~refused).all()  # only an offload can be refused
    np.testing.assert_array_equal(np.asarray(fr["loss"])[refused], np.asarray(fr["weak_cost"])[refused])
  assert summary["measured"]["hierarchical"]["status"]["refused"] > 0  # the switch said no
  assert summary["measured"]["smart"]["status"]["refused"] > 0
  pred = summary["simulator"]
  for s in fleet.STRATEGIES:
    lo, hi = pred[s]["server_rule_spread"]
    assert lo <= pred[s]["server_rule_loss"] <= hi and pred[s]["granted"] <= pred[s]["fired"]
  text = (out / "report.md").read_text()
  for word in ("multicam.simulate, same streams", "camera 1: exit status -9", "fleet_loss.png", "refused"):
    assert word in text


@pytest.mark.parametrize(
  "key,value,named",
  [
    ("cameras", 0, "config.deploy.cameras"),
    ("cameras", "4", "config.deploy.cameras"),
    ("strategy", "greedy", "config.deploy.strategy"),
    ("stream_seeds", (1, 2, 3), "config.deploy.stream_seeds"),
    ("stream_seeds", (1, "2"), "config.deploy.stream_seeds[1]"),
    ("stream_seeds", "1,2", "config.deploy.stream_seeds"),
    ("share_rate", 0.3, "config.deploy.share_rate"),
    ("share_depth", 7.0, "config.deploy.share_depth"),
    ("policy", "dqn", "config.deploy.policy"),
    ("arrivals", "markov", "config.deploy.arrivals"),
  ],
)
def test_a_bad_fleet_value_is_one_config_error_naming_the_key(key, value, named):
  c = quick.get_config("deploy")
  c.deploy.cameras = 2
  with c.deploy.ignore_type():
    c.deploy[key] = value
  with pytest.raises(ConfigError) as e:
    pipeline.validate(c)
  assert named in str(e.value) and "\n" not in str(e.value), str(e.value)
