"""The multi-camera switch simulation against a plain NumPy loop of the original rule, the
strategies' ordering, the grid MDP against the per-setting MDP, and the new config keys."""

import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from common import app
from common.errors import ConfigError
from offload import bucket, mdp, multicam, pipeline, robust
from offload import data as odata

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def data():
  return odata.prepare(odata.synthetic(1500, seed=3))


def reference_mcsimulate(th, qpm_i, qpm_g, ncam, metrics, rewards, imidx):
  """edgeml.mdp `mcsimulate`'s update, one slot and one camera at a time (imidx [T, S, >= ncam]).

  Returns (gain sum, granted, switch units summed before each arrival, histogram of those units).
  """
  (qi, pi, mi), (qg, pg, mg) = qpm_i, qpm_g
  slots, nstreams = imidx.shape[:2]
  gain, granted, occ, hist = 0.0, 0, 0, np.zeros(mg + 1, np.int64)
  for s in range(nstreams):
    ni, ng = [mi] * ncam, mg
    for t in range(slots):
      fire = []
      for j in range(ncam):  # every camera's own rule first, spending its own tokens
        f = ni[j] >= pi and metrics[imidx[t, s, j]] >= th[ni[j]]
        ni[j] = min(mi, ni[j] - pi * f + qi)
        fire.append(f)
      for j in range(ncam):  # then the switch, cameras in index order
        occ += ng
        hist[ng] += 1
        ok = fire[j] and ng >= pg
        if ok:
          gain += float(rewards[imidx[t, s, j]])
          granted += 1
        ng = min(mg, ng - pg * ok + qg)
  return gain, granted, occ, hist


def reference_smart(th, qpm_g, ncam, metrics, rewards, imidx):
  """The smart switch as the original runs it: one bucket (r, N b) over the cameras' images in order."""
  q, p, m = qpm_g
  gain, granted, occ, hist = 0.0, 0, 0, np.zeros(m + 1, np.int64)
  for s in range(imidx.shape[1]):
    n = m
    for i in imidx[:, s, :ncam].reshape(-1):
      occ += n
      hist[n] += 1
      ok = n >= p and metrics[i] >= th[n]
      gain, granted = gain + float(rewards[i]) * ok, granted + ok
      n = min(m, n - p * ok + q)
  return gain, granted, occ, hist


def test_simulation_equals_numpy_loop_of_the_original_rule(data):
  tr = data.train
  cases = [  # (r_i, b_i), N, (r, b) per camera, smart
    ((0.1, 1.0), 2, (0.1, 1.0), False),
    ((0.2, 3.0), 3, (0.1, 1.0), False),
    ((0.125, 2.5), 3, (0.05, 2.0), False),
    ((0.25, 1.0), 1, (0.25, 1.0), False),
    ((0.1, 3.0), 3, (0.1, 1.0), True),
  ]
  pts = [rb_i if not sm else (r, b * n) for rb_i, n, (r, b), sm in cases]
  th = mdp.thresholds_grid(tr.metrics, tr.rewards, *zip(*pts, strict=True), max_sweeps=300)
  qi = [bucket.discretize(*p) for p in pts]
  qg = [bucket.discretize(r, b * n) for _, n, (r, b), _ in cases]
  cams, smart = [c[1] for c in cases], [c[3] for c in cases]
  idx = multicam.streams(jax.random.key(0), len(tr.metrics), 300, 3, 3)
  hist_size = 1 + max(q.m for q in qg)
  tot = multicam.run_chunked(
    th, multicam.settings(cams, qi, qg, smart), tr.metrics, tr.rewards, idx, chunk=2, hist_size=hist_size
  )
  imidx = np.asarray(idx)
  for g, (_, n, _, sm) in enumerate(cases):
    if sm:
      ref = reference_smart(th[g], qg[g], n, tr.metrics, tr.rewards, imidx)
    else:
      ref = reference_mcsimulate(th[g], qi[g], qg[g], n, tr.metrics, tr.rewards, imidx)
    got = (float(tot.gain[g].sum()), int(tot.granted[g]), int(tot.occupancy[g].sum()), tot.histogram[g])
    assert got[:3] == ref[:3], (g, got[:3], ref[:3])
    np.testing.assert_array_equal(got[3][: len(ref[3])], ref[3])
    avg = multicam.per_image(tot, cams, 300, 3)["gain"][g]
    assert avg == ref[0] / (n * 300 * 3)  # the average gain, exactly


def test_grid_policies_equal_the_per_setting_mdp(data):
  tr = data.train
  pts = [(0.05, 1.0), (0.1, 2.5), (0.25, 4.0), (0.075, 1.25)]
  th = mdp.thresholds_grid(tr.metrics, tr.rewards, *zip(*pts, strict=True), max_sweeps=1500)
  for row, (r, b) in zip(th, pts, strict=True):
    one = mdp.thresholds(tr.metrics, tr.rewards, r, b, max_sweeps=1500)
    np.testing.assert_array_equal(row[: len(one)], one)
    assert np.isinf(row[len(one) :]).all()


def test_strategies_ordering_on_a_small_grid(data):
  sw = multicam.Sweep((2, 4), (0.1,), (1.0,), (0.1, 0.15, 0.2), (1.0, 2.0, 3.0, 4.0))
  out = multicam.strategies(
    data.train, data.test, sw, jax.random.key(1), train_shape=(2000, 8), test_shape=(2000, 8),
    gamma=0.9999, max_sweeps=1000, chunk=16,
  )  # fmt: skip
  loss = multicam.losses(out)
  iso, hier, smart = (loss[s][0, 0] for s in ("isolated", "hierarchical", "smart"))
  assert (smart <= hier).all() and (hier < iso).all(), (iso, hier, smart)  # as the paper: iso > hier > smart
  assert (iso - smart > 0.005).all()  # the switch's pooling is worth something here
  assert (out["weak"] > iso).all() and (smart > out["strong"]).all()
  best = out["best"][0, 0]
  assert all(tuple(b) in {(r, d) for r in sw.grid_rates for d in sw.grid_depths} for b in best)
  assert np.isnan(out["scores"]).sum() == 0  # (0.1, 1) is the least point; nothing below it to skip


def test_robustness_shift_drops_by_rank():
  m, r = np.arange(10.0), np.arange(10.0) * 10
  assert robust.shifted(m, r, 30)[0].tolist() == [3, 4, 5, 6, 7, 8, 9]
  assert robust.shifted(m, r, -30)[1].tolist() == [0, 10, 20, 30, 40, 50, 60]


BAD = [
  ("multicam.cameras", (0, 2), r"config.multicam.cameras\[0\] = 0"),
  ("multicam.rates", (0.0,), r"config.multicam.rates\[0\] = 0.0"),
  ("multicam.depths", (0.5,), r"config.multicam.depths\[0\] = 0.5"),
  ("multicam.grid_rates", (-0.1, 0.2), r"config.multicam.grid_rates\[0\] = -0.1"),
  ("multicam.grid_depths", (0.5, 2.0), r"config.multicam.grid_depths\[0\] = 0.5"),
  ("multicam.grid_rates", (0.05,), r"config.multicam.grid_rates / grid_depths: no point"),
  ("multicam.test_slots", 0, r"config.multicam.test_slots"),
  ("multicam.mdp_sweeps", 0, r"config.multicam.mdp_sweeps"),
  ("robust.drops", (100,), r"config.robust.drops\[0\] = 100"),
  ("robust.rates", (1.5,), r"config.robust.rates\[0\] = 1.5"),
  ("robust.depths", (0.5,), r"config.robust.depths\[0\] = 0.5"),
  ("robust.test_streams", 0, r"config.robust.test_streams"),
]


@pytest.mark.parametrize("key,value,match", BAD, ids=[f"{k}={v}" for k, v, _ in BAD])
def test_config_errors_name_the_key(key, value, match):
  c = app.load_config_file("offload/configs/quick.py:fast")
  if key == "multicam.grid_rates" and value == (0.05,):
    c.multicam.grid_depths = (1.0,)  # only (0.05, 1): less of both than the share (0.1, 1)
  c.update_from_flattened_dict({key: value})
  with pytest.raises(ConfigError, match=match):
    pipeline.validate(c)


def test_cli_refuses_an_infeasible_grid_and_writes_nothing(tmp_path):
  work = tmp_path / "run"
  proc = subprocess.run(
    [sys.executable, "-m", "offload.main", "multicam", f"--config={ROOT / 'offload/configs/quick.py'}:fast",
     f"--workdir={work}", "--config.metrics.source=synthetic", "--config.multicam.grid_rates=(0.05,)",
     "--config.multicam.grid_depths=(1.0,)"],
    cwd=ROOT, capture_output=True, text=True, timeout=120,
  )  # fmt: skip
  assert proc.returncode == 2, proc.stderr
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and "config.multicam.grid_rates" in lines[0] and "Traceback" not in proc.stderr
  assert not work.exists() or not any(work.iterdir())
