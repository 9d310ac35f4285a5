"""Controllers: plentiful -> largest, scarce -> smallest, never a missable deadline, solvers agree."""

import numpy as np
import pytest

from coinfer import compress, simulate
from coinfer import controller as C
from common import traces


def _profile(setups=None):
  setups = setups or compress.make_setups((1, 2, 4, 8, 32), (1, 2, 4, 8))
  rate = np.asarray([s.channels * s.bits for s in setups], float)
  acc = 0.99 - 0.2 * np.exp(-rate / 40)
  return C.make_profile(setups, acc, image_shape=(224, 224, 3))


def _state(bps, backlog_bits=0.0):
  return C.ControlState(0, 0.0, backlog_bits, (bps,) * 6)


def _decide(ctl, obs, state=None):
  """The controller's choice for `obs` from `state` (a fresh one by default), and its new state."""
  return ctl.update(obs, ctl.init() if state is None else state)


@pytest.mark.parametrize("method", ["dp", "milp", "relax"])
def test_plentiful_picks_largest_scarce_picks_smallest(method):
  prof = _profile()
  ctl = C.make_mpc(prof, 3, fps=10, deadline_s=0.2, method=method)
  assert _decide(ctl, _state(1e10))[0] == int(np.argmax(prof.bits))
  assert _decide(ctl, _state(1e4))[0] == int(np.argmin(prof.bits))


def test_predict_bandwidth_harmonic_mean_and_margin():
  assert C.predict_bandwidth([1e6, 4e6], 5, margin=False) == pytest.approx(2 / (1 / 1e6 + 1 / 4e6))
  flat = C.predict_bandwidth([2e6] * 6, 5, margin=True)
  assert flat == pytest.approx(2e6)
  noisy = C.predict_bandwidth([2e6, 4e6, 2e6, 4e6, 2e6, 4e6], 5, margin=True)
  assert noisy < C.predict_bandwidth([2e6, 4e6, 2e6, 4e6, 2e6, 4e6], 5, margin=False)


def test_hand_built_case_keeps_a_meetable_deadline():
  # Two setups: small (1 Mbit, acc 0.8) and big (3 Mbit, acc 0.9); 10 Mbit/s, 10 fps, T = 0.25 s.
  prof = C.Profile(("small", "big"), np.asarray([1e6, 3e6]), np.asarray([0.8, 0.9]), np.zeros(2), np.zeros(2))
  for method in ("dp", "milp"):
    ctl = C.make_mpc(prof, 3, fps=10, deadline_s=0.25, history=1, margin=False, method=method)
    # empty queue: big takes 0.3 s > T -> small
    assert _decide(ctl, C.ControlState(0, 0.0, 0.0, (10e6,)))[0] == 0
    prof2 = C.Profile(prof.names, prof.bits, prof.accuracy, prof.t_dev, prof.t_srv)
    ctl2 = C.make_mpc(prof2, 3, fps=10, deadline_s=0.35, history=1, margin=False, method=method)
    # T = 0.35: big alone fits (0.3 s) but leaves 0.2 s of queue; next frame small: 0.2 + 0.1 = 0.3 <= 0.35,
    # then 0.2 s of queue again ... the planner may take big now; with 1 Mbit already queued (0.1 s) big
    # would take 0.4 s > T, so it must pick small.
    choice, state = _decide(ctl2, C.ControlState(0, 0.0, 1e6, (10e6,)))
    assert choice == 0
    assert state.fallbacks == 0


def test_mpc_never_misses_on_a_constant_link():
  prof = _profile()
  tr = traces.Trace("const", np.asarray([0.0]), np.asarray([5e6]), 10.0)
  for method in ("dp", "milp"):
    ctl = C.make_mpc(prof, 5, fps=10, deadline_s=0.2, method=method)
    out = simulate.run(ctl, tr, profile=prof, fps=10, deadline_s=0.2, frames=40)
    assert out["summary"]["deadline_miss_rate"] == 0.0
    assert out["summary"]["accuracy"] > 0.8


def test_dp_matches_milp_objective_on_random_states():
  prof = _profile()
  rng = np.random.default_rng(0)
  dp = C.make_mpc(prof, 4, method="dp")
  milp = C.make_mpc(prof, 4, method="milp", reduce=False)
  agree, s_dp, s_milp = 0, dp.init(), milp.init()
  for _ in range(15):
    s = _state(float(rng.uniform(0.5e6, 40e6)), float(rng.uniform(0, 2e6)))
    (a, s_dp), (b, s_milp) = dp.update(s, s_dp), milp.update(s, s_milp)
    agree += prof.accuracy[a] == pytest.approx(prof.accuracy[b], abs=2e-3)
  assert agree >= 14


def test_infeasible_falls_back_to_smallest_and_counts():
  prof = _profile()
  ctl = C.make_mpc(prof, 3, fps=10, deadline_s=0.2, method="milp")
  choice, state = _decide(ctl, _state(1e6, backlog_bits=1e9))
  assert choice == int(np.argmin(prof.bits))
  assert state.fallbacks == 1


def test_baselines_and_oracle():
  prof = _profile()
  rate = C.make_rate_based(prof, fps=10)
  assert prof.bits[_decide(rate, _state(10e6))[0]] / 10e6 <= 0.1
  buf = C.make_buffer_based(prof, deadline_s=0.2)
  assert prof.bits[_decide(buf, _state(5e6, 0.0))[0]] > prof.bits[_decide(buf, _state(5e6, 5e6))[0]]
  tr = traces.synthetic("step", 0, 30)
  out = simulate.run(C.make_oracle(prof, tr), tr, profile=prof, frames=100)
  assert out["summary"]["deadline_miss_rate"] <= 0.05
