"""DQN: features, Bellman targets against NumPy, one compiled vmapped iteration, seeds, learning."""

from unittest import mock

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from offload import bucket, dqn, mdp, sequences, simulate
from offload import data as odata
from offload.models import DQNConfig, QNetwork, send_margin, send_margin_params, send_table


def test_features_zero_padded():
  cfg = DQNConfig(nhist1=2, nhist2=1)
  metrics = jnp.asarray([[1.0, 2.0, 3.0, 4.0]])
  intervals = jnp.asarray([[1, 3, 2, 1]])
  x = dqn.features(metrics, intervals, jnp.asarray([0, 0]), jnp.asarray([0, 3]), cfg)
  np.testing.assert_allclose(x, [[1, 0, 0, 0, 0], [4, 3, 2, 2, 3]])
  assert cfg.in_size == 5


def _targets_numpy(qn, r, iv, q, p, m, gamma, pmf=None):
  """Brute force over every (state, action) from the definitions in the digest (Sec. 5.6)."""
  s = qn.shape[1] // 2
  out = np.zeros_like(qn)

  def v(b, n):
    return max(qn[b, n], qn[b, s + n]) if n >= p else qn[b, n]

  for b in range(qn.shape[0]):
    for a in (0, 1):
      for n in range(s):
        k = n - p * a
        if k < 0:
          continue
        if pmf is None:
          ev = v(b, min(m, k + q * iv[b]))
        else:
          ev = sum(pmf[i] * v(b, min(m, k + q * i)) for i in range(1, len(pmf)))
        out[b, a * s + n] = a * r[b] + gamma * ev
  return out


@pytest.mark.parametrize("matrix", [False, True])
def test_targets_against_numpy(matrix):
  q, p, m = bucket.discretize(0.25, 2)  # (1, 4, 8)
  rng = np.random.default_rng(0)
  qn = rng.normal(size=(5, 2 * (m + 1))).astype(np.float32)
  r = rng.normal(size=5).astype(np.float32)
  iv = rng.integers(1, 4, 5)
  pmf = np.array([0.0, 0.5, 0.2, 0.3])
  tmat = bucket.padded_transition(q, m, jnp.asarray(pmf, jnp.float32), m + 1) if matrix else None
  got = np.asarray(dqn.targets(jnp.asarray(qn), jnp.asarray(r), jnp.asarray(iv), q, p, m, 0.9, tmat))
  ref = _targets_numpy(qn, r, iv, q, p, m, 0.9, pmf if matrix else None)
  mask = np.asarray(dqn.output_mask(m + 1, q, p, m))
  np.testing.assert_allclose(got[:, mask], ref[:, mask], rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def trained():
  """Two seeds x one setting, trained briefly on location-reset sequences of synthetic metrics."""
  d = odata.prepare(odata.synthetic(30_000, seed=0))
  seq = np.asarray(
    sequences.image_sequences(jax.random.key(0), n=len(d.train.metrics), num=16, length=20_000, stype=1)
  )
  pool = dqn.Pool(
    jnp.asarray(d.train.metrics[seq]), jnp.asarray(d.train.rewards[seq]), jnp.ones(seq.shape, jnp.int32)
  )
  rate, depth = 0.1, 4
  q, p, m = bucket.discretize(rate, depth)
  net = QNetwork(DQNConfig(nhist1=15), m + 1)
  rows = 2
  state = dqn.init_rows(jax.random.split(jax.random.key(1), rows), net, jnp.full((rows,), 1e-3))
  # One Q-iteration traced at most once over the 60 calls (a retrace raises AssertionError here).
  traced_once = chex.assert_max_traces(dqn.q_iteration_fn, n=1)
  with mock.patch.object(dqn, "q_iteration_fn", traced_once):
    step = dqn.make_batched_iteration(net, dqn.FQIConfig(gbsz=64, ngdup=16, discount=0.99))
    pmf = dqn.padded_pmf(bucket.interval_pmf(None))
    qs, ps, ms = (jnp.full((rows,), v, jnp.int32) for v in (q, p, m))
    keys = jax.random.split(jax.random.key(2), rows)
    init_params = jax.tree.map(np.asarray, state.params)
    for _ in range(60):
      state, met = step(state, keys, qs, ps, ms, pool, pmf)
  return {
    "d": d,
    "net": net,
    "state": state,
    "step": step,
    "init": init_params,
    "loss": np.asarray(met["loss"]),
  }


def test_one_program_traced_once_and_finite(trained):
  # the fixture ran the 60 iterations under chex.assert_max_traces(n=1)
  assert np.all(np.isfinite(trained["loss"]))
  assert np.all(np.asarray(trained["state"].it) == 60)


def test_vmapped_seeds_give_different_networks(trained):
  for tree in (trained["init"], jax.tree.map(np.asarray, trained["state"].params)):
    k0 = tree["dense0"]["kernel"]
    assert not np.allclose(k0[0], k0[1])


def test_short_dqn_beats_baseline_on_correlated_sequences(trained):
  d, net, state = trained["d"], trained["net"], trained["state"]
  rate, depth = 0.1, 4
  tseq = np.asarray(
    sequences.image_sequences(jax.random.key(5), n=len(d.test.metrics), num=16, length=10_000, stype=1)
  )
  weak = d.test.wcost[tseq].mean()
  base = weak - simulate.run(
    mdp.baseline_thresholds(d.train.metrics, rate, depth),
    d.test.metrics,
    d.test.rewards,
    tseq,
    None,
    rate,
    depth,
  )
  for row in range(2):
    params = jax.tree.map(lambda x, row=row: x[row], state.params)
    loss = weak - simulate.run(
      simulate.DQNPolicy(params, net), d.test.metrics, d.test.rewards, tseq, None, rate, depth
    )
    assert loss < base - 0.005, (row, loss, base)


def test_simulation_matches_per_image_reference():
  rng = np.random.default_rng(0)
  metrics, rewards = rng.normal(size=50).astype(np.float32), rng.normal(size=50).astype(np.float32)
  seq = rng.integers(0, 50, (3, 400))
  iv = rng.integers(1, 4, (3, 400))
  rate, depth = 0.25, 2
  q, p, m = bucket.discretize(rate, depth)
  th = np.full(m + 1, np.inf)
  th[p:] = np.linspace(1.0, -0.5, m + 1 - p)
  total, sent, occ, decisions = 0.0, 0, 0, 0
  for s in range(3):
    n = m
    for t in range(400):
      x = seq[s, t]
      go = n >= p and metrics[x] >= th[n]
      occ += n
      decisions += n >= p
      total += rewards[x] if go else 0.0
      sent += go
      n = min(m, n - p * go + q * iv[s, t])
  res = simulate.simulate(th, metrics, rewards, seq, iv, rate, depth, block=100)
  assert res["reward"] == pytest.approx(total / 1200, rel=1e-5)
  assert res["offload_fraction"] == pytest.approx(sent / 1200)
  assert res["occupancy"] == pytest.approx(occ / 1200 / m)
  assert res["decision_fraction"] == pytest.approx(decisions / 1200)
  assert 0 < decisions < 1200  # the bucket both runs dry and holds tokens in this stream


def test_send_margin_is_the_send_tables_difference(trained):
  net = trained["net"]
  params = jax.tree.map(lambda a: a[0], trained["state"].params)
  x = jax.random.normal(jax.random.key(3), (512, net.config.in_size))
  qv = net.apply({"params": params}, x)[0]
  margin = send_margin(send_margin_params(params, net.config.nlayers), x)
  q0, q1 = qv[:, : net.num_states], qv[:, net.num_states :]
  np.testing.assert_allclose(margin, q1 - q0, rtol=1e-4, atol=1e-5)
  _, p, _ = bucket.discretize(0.1, 4)
  near_tie = np.abs(np.asarray(q1 - q0)) < 1e-4
  np.testing.assert_array_equal(
    np.where(near_tie, False, send_table(qv, p)),
    np.where(near_tie, False, (margin >= 0) & (jnp.arange(net.num_states) >= p)),
  )


@pytest.mark.parametrize("nhist2", [-1, 2])
def test_fused_dqn_simulation_matches_the_unfused_path(trained, nhist2):
  """The fused path (first layer as a convolution, folded output layer) against the path it replaced
  (gathered features, the network's 2 S outputs): same sums on streams with random intervals."""
  d = trained["d"]
  rate, depth = 0.25, 2
  q, p, m = bucket.discretize(rate, depth)
  if nhist2 < 0:
    net, params = trained["net"], jax.tree.map(lambda a: a[1], trained["state"].params)
  else:  # intervals as inputs: an untrained network whose decisions depend on them
    net = QNetwork(DQNConfig(nhist1=7, nhist2=nhist2), m + 1)
    params = net.init(jax.random.key(4), jnp.zeros((1, net.config.in_size)))["params"]
  rng = np.random.default_rng(1)
  seq = rng.integers(0, len(d.test.metrics), (5, 600))
  iv = rng.integers(1, 4, seq.shape)
  pol = simulate.DQNPolicy(params, net)
  args = (pol, d.test.metrics, d.test.rewards, seq, iv, rate, depth)
  fused = simulate.simulate(*args, block=200)
  assert fused == simulate.simulate(*args, block=200, fused=False)
  assert fused == simulate.simulate(*args, block=600)  # blocks do not change the result
  assert fused == simulate.simulate(*args, block=75)  # a block that is no multiple of 2
  assert 0.05 < fused["offload_fraction"] < fused["decision_fraction"] < 1


def test_int8_dqn_runs_under_tflite_micro_and_is_refused_when_ram_is_short(trained, tmp_path):
  from common import micro
  from common.errors import ExportError
  from offload import export as oexport

  net, d = trained["net"], trained["d"]
  params = jax.tree.map(lambda a: a[0], trained["state"].params)
  n = 96
  x = np.asarray(
    dqn.features(
      jnp.asarray(d.test.metrics[None, : n + 1]), jnp.ones((1, n + 1), jnp.int32),
      np.zeros(n, np.int32), np.arange(1, n + 1), net.config,
    )
  )  # fmt: skip
  res = oexport.export_dqn(net, params, x, 1, tmp_path, int8=True, onnx=False, ram_bytes=64 * 1024)
  t8 = (tmp_path / "dqn_int8.tflite").read_bytes()
  assert res["int8_micro_images"] == n and res["int8_micro_fits"]
  assert micro.loads(t8, res["int8_micro_arena_bytes"])
  assert not micro.loads(t8, res["int8_micro_arena_bytes"] - micro.ARENA_STEP)
  assert "FULLY_CONNECTED" in res["int8_micro_ops"] and res["int8_micro_max_lsb_diff"] is not None
  # An arena that does not fit the target's RAM: refused, and no int8 file is written.
  short = tmp_path / "short"
  with pytest.raises(ExportError, match=r"needs a \d+-byte tensor arena.*export\.target_ram_bytes"):
    oexport.export_dqn(net, params, x, 1, short, int8=True, onnx=False, ram_bytes=2048)
  assert not (short / "dqn_int8.tflite").exists() and not (short / "micro").exists()
