"""MDP thresholds (against brute-force value iteration), structure, units, and the policy ordering."""

import jax
import numpy as np
import pytest

from offload import bucket, mdp, sequences, simulate
from offload import data as odata


def _tiny(seed=0, n=200):
  rng = np.random.default_rng(seed)
  m = rng.normal(size=n)
  r = (rng.uniform(size=n) < 1 / (1 + np.exp(-2 * m))).astype(float) - (rng.uniform(size=n) < 0.1)
  return m, r


@pytest.mark.parametrize(
  "rate,depth,intervals", [(0.25, 2, None), (0.1, 1.5, None), (0.25, 2, np.array([1, 1, 3, 2, 1]))]
)
def test_thresholds_match_brute_force(rate, depth, intervals):
  m, r = _tiny()
  fast = mdp.thresholds(m, r, rate, depth, gamma=0.99, intervals=intervals)
  ref = mdp.brute_force_thresholds(m, r, rate, depth, gamma=0.99, intervals=intervals, sweeps=3000)
  np.testing.assert_array_equal(fast, ref)


def test_threshold_structure_and_units():
  d = odata.prepare(odata.synthetic(20_000, seed=1))
  m, r = d.train.metrics, d.train.rewards
  th = mdp.thresholds(m, r, 0.1, 4)
  q, p, mm = bucket.discretize(0.1, 4)
  assert th.shape == (mm + 1,)
  assert np.all(np.isinf(th[:p])) and np.all(np.isfinite(th[p:]))
  assert np.all(np.diff(th[p:]) <= 0)  # non-increasing in the token state
  # in the units of the metrics as given: an affine change of units moves the thresholds with it
  th2 = mdp.thresholds(np.asarray(m, np.float64) * 3.0 + 1.0, r, 0.1, 4)
  np.testing.assert_allclose(th2[p:], th[p:] * 3.0 + 1.0, rtol=1e-5)


def test_never_send_when_all_rewards_negative():
  m = np.linspace(0, 1, 50)
  th = mdp.thresholds(m, -np.ones(50), 0.25, 2)
  assert np.all(np.isinf(th))


def test_iid_ordering_lower_bound_mdp_baseline():
  d = odata.prepare(odata.synthetic(30_000, seed=2))
  seq = np.asarray(
    sequences.image_sequences(jax.random.key(0), n=len(d.test.metrics), num=16, length=20_000, stype=0)
  )
  ms, rs = d.test.metrics[seq], d.test.rewards[seq]
  weak = d.test.wcost[seq].mean()
  for rate, depth in ((0.1, 4), (0.25, 2)):
    th = mdp.thresholds(d.train.metrics, d.train.rewards, rate, depth)
    mdp_loss = weak - simulate.run(th, d.test.metrics, d.test.rewards, seq, None, rate, depth)
    base = mdp.baseline_thresholds(d.train.metrics, rate, depth)
    base_loss = weak - simulate.run(base, d.test.metrics, d.test.rewards, seq, None, rate, depth)
    lb_loss = weak - mdp.lower_bound_reward(ms, rs, mdp.baseline_threshold(d.train.metrics, rate))
    assert lb_loss < mdp_loss < base_loss, (rate, depth, lb_loss, mdp_loss, base_loss)
