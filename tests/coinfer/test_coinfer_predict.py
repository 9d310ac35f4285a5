"""The deploy report's simulator figures: means over draws of the server's answer times, each draw a
plain closed-loop run of `coinfer.simulate` (the slow path: one `simulate.run` per seed)."""

import json
import types
from pathlib import Path

import numpy as np
import pytest

from coinfer import deploy, simulate
from common.errors import ConfigError
from common.traces import Trace

FIXTURE = Path(__file__).resolve().parents[1] / "common" / "data" / "tc_run_att_capture.json"
STREAM = {"horizon": 5, "fps": 10.0, "deadline_s": 0.2, "history": 5, "margin": True, "method": "dp"}


def _recorded_run(frames: int = 150):
  """A device record shaped as the runtime writes it, from the recorded ATT tc run's calibration,
  with answer times that vary per request (what makes the draws differ)."""
  fix = json.loads(FIXTURE.read_text())
  tr = fix["trace"]
  trace = Trace("att", np.asarray(tr["times_s"]), np.asarray(tr["rates_bps"]), tr["period_s"])
  rng = np.random.default_rng(0)
  wire = {**fix["wire"], "answer_s": [list(rng.uniform(0.5e-3, 12e-3, 15)) for _ in fix["profile"]["bits"]]}
  profile = {**fix["profile"], "names": ["N1Q1", "N4Q4", "N32Q8"], "accuracy": [0.44, 0.78, 0.95]}
  out = {"profile": profile, "stream": STREAM, "controller": "mpc", "frames": {"setup": [0] * frames},
         "rtt_s": fix["rtt_s"], "wire": wire}  # fmt: skip
  dep = types.SimpleNamespace(
    correct=np.random.default_rng(1).random((3, 200)) < np.asarray([[0.44], [0.78], [0.95]])
  )
  return dep, out, trace


def _slow(dep, out, trace, seed):
  p, s = out["profile"], out["stream"]
  prof = deploy.C.Profile(
    tuple(p["names"]), *(np.asarray(p[k]) for k in ("bits", "accuracy", "t_dev", "t_srv"))
  )
  return simulate.run(
    deploy.make_controller("mpc", prof, s), trace, profile=prof, fps=s["fps"], deadline_s=s["deadline_s"],
    frames=len(out["frames"]["setup"]), correct=dep.correct, history=11,
    link=deploy.link_model(out["wire"], trace, out["rtt_s"], s["fps"], s["deadline_s"]),
    rtt_s=out["rtt_s"], answer_s=out["wire"]["answer_s"], seed=seed,
  )  # fmt: skip


def test_the_simulators_figures_are_means_over_its_answer_time_draws():
  dep, out, trace = _recorded_run()
  pred = deploy.predict(dep, out, trace, draws=4)
  runs = [_slow(dep, out, trace, seed) for seed in range(4)]
  lat = [r["summary"]["mean_latency_s"] for r in runs]
  assert len(set(lat)) == 4, lat  # the draws differ, so the mean is a real mean
  assert pred["summary"]["mean_latency_s"] == pytest.approx(np.mean(lat), rel=1e-12)
  assert pred["summary"]["spread"]["mean_latency_s"] == [min(lat), max(lat)]
  for key in ("deadline_miss_rate", "timely_accuracy", "mean_queue_s"):
    assert pred["summary"][key] == pytest.approx(np.mean([r["summary"][key] for r in runs]), abs=1e-12)
  assert pred["summary"]["draws"] == 4
  assert pred["setup"] == runs[0]["setup"].astype(int).tolist()  # the per-frame series: draw 0's
  assert len(pred["latency_s_draws"]) == 4 and pred["latency_s_draws"][3] == runs[3]["latency_s"].tolist()


def test_the_simulator_needs_a_draw():
  dep, out, trace = _recorded_run(10)
  with pytest.raises(ConfigError, match="at least one draw"):
    deploy.predict(dep, out, trace, draws=0)
