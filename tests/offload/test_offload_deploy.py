"""offload on the serving runtime: a server process, a device process, the loss beside the simulator's."""

import json

import numpy as np
import pytest

from common.errors import ConfigError
from offload import deploy as odeploy
from offload import deploy_report, pipeline
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
