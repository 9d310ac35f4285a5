"""Benchmark of `offload`: Q-iteration, MDP solve and simulation against NumPy re-creations of the originals.

    python -m launch.bench offload                 # --skip_multicam: 234-300 s under load (the DQN paths interleaved)
    python -m launch.bench offload --quick         # smaller references, fewer repeats
    python -m launch.bench offload --only_multicam # the multi-camera grid alone (offload_multicam.py)

References, measured in the same run (the original code needs TF <= 2.10 and
numpy < 1.24, so it is re-created here in NumPy from the digest's description):
- Q-iteration: edgeml-dqn's per-iteration loop: sample 16,384 tuples with NumPy
  gathers, predict Q on the next features, `qflatprev` targets, then 128 Adam
  steps of batch 128 on the MSE (hand-written forward/backward of the 5x64
  LeakyReLU MLP, Adam with eps 1e-7, as Keras `fit` with shuffle=False).
- MDP: edgeml-dqn `iidpolicy`: value iteration scanning all N candidate
  thresholds in every token state of every sweep, stopping when no threshold
  moves by 1e-6 of the metric range (the original's rule).
- Simulation: the original steps time one image at a time over 100 parallel
  streams (a `tf.function` loop in edgeml-dqn, the per-image loop of eomdp);
  here a Python loop over time with NumPy over the streams, run on `--ref_len`
  images per stream and extrapolated per image (said in the output).
Published timings of the originals on a 2-core machine (issue 4): 1.3-2.0 s per
Q-iteration, 3.6 s for the MDP at r=0.1, b=4, 15-20 s per policy for 100 x 100k.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from common.timing import matmul_peak, measure, measure_interleaved
from common.xla_cpu import CPU_OPTIONS
from launch.benchmarks import offload_multicam
from offload import bucket, dqn, mdp, sequences, simulate
from offload import data as odata
from offload.models import DQNConfig, QNetwork, send_margin_params

PUBLISHED = {"q_iteration_s": (1.3, 2.0), "mdp_s": 3.6, "simulation_s": (15.0, 20.0)}


def add_args(parser) -> None:
  parser.add_argument("--quick", action="store_true", help="smaller references and fewer repeats")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument(
    "--ref_len", type=int, default=5000, help="images per stream in the simulation reference"
  )
  parser.add_argument(
    "--pool_len", type=int, default=100_000, help="training pool: 100 streams of this length"
  )
  parser.add_argument("--only_multicam", action="store_true", help="the multi-camera grid alone")
  parser.add_argument("--skip_multicam", action="store_true", help="the single-camera parts alone")
  offload_multicam.add_args(parser)


# ------------------------------------------------------------------ NumPy references


def _np_init(rng, sizes):
  params = []
  for a, b in zip(sizes[:-1], sizes[1:], strict=True):
    lim = np.sqrt(6.0 / a)
    params.append([rng.uniform(-lim, lim, (a, b)).astype(np.float32), np.zeros(b, np.float32)])
  return params


def _np_forward(params, x, cache=None):
  h = x
  for i, (w, b) in enumerate(params):
    z = h @ w + b
    if cache is not None:
      cache.append((h, z))
    h = z if i == len(params) - 1 else np.where(z > 0, z, 0.2 * z)
  return h


def _np_step(params, adam, x, y, mask, lr, t):
  cache = []
  out = _np_forward(params, x, cache)
  g = 2.0 * (out - y) * mask / (x.shape[0] * mask.sum())
  for i in range(len(params) - 1, -1, -1):
    h, z = cache[i]
    if i < len(params) - 1:
      g = g * np.where(z > 0, 1.0, 0.2)
    gw, gb = h.T @ g, g.sum(0)
    g = g @ params[i][0].T
    for j, gr in ((0, gw), (1, gb)):
      m, v = adam[i][j]
      m *= 0.9
      m += 0.1 * gr
      v *= 0.999
      v += 0.001 * gr * gr
      mhat, vhat = m / (1 - 0.9**t), v / (1 - 0.999**t)
      params[i][j] -= lr * mhat / (np.sqrt(vhat) + 1e-7)


def reference_q_iteration(
  params, adam, pool_m, pool_r, qpm, tmat, rng, step0, nhist1=95, gbsz=128, ngdup=128
):
  """One iteration of edgeml-dqn's loop in NumPy (matrix path, nhist2 = -1)."""
  q, p, m = qpm
  n = gbsz * ngdup
  i0 = rng.integers(0, pool_m.shape[0], n)
  t = rng.integers(0, pool_m.shape[1] - 1, n)
  idx = t[:, None] - np.arange(nhist1 + 1)
  cur = np.where(idx >= 0, pool_m[i0[:, None], np.maximum(idx, 0)], 0.0).astype(np.float32)
  nxt = np.concatenate([pool_m[i0, t + 1][:, None], cur[:, :-1]], axis=1)
  rew = pool_r[i0, t]
  qn = _np_forward(params, nxt)
  a0 = m + 1 - q
  q0, q1 = qn[:, :a0], qn[:, a0:]
  v = q0.copy()
  v[:, p - q :] = np.maximum(v[:, p - q :], q1)
  ev = v @ tmat.T  # [n, m + 1] by post-decision count
  tgt = np.concatenate([0.9999 * ev[:, q:], rew[:, None] + 0.9999 * ev[:, : m - p + 1]], axis=1)
  tgt -= tgt.mean()
  mask = np.ones(tgt.shape[1], np.float32)
  for s in range(ngdup):
    sl = slice(s * gbsz, (s + 1) * gbsz)
    _np_step(params, adam, cur[sl], tgt[sl], mask, 1e-3, step0 + s + 1)


def reference_mdp(metrics, rewards, rate, depth, gamma=0.9999, tol=1e-6, max_sweeps=10_000):
  """edgeml-dqn `iidpolicy`: full scan over all N thresholds per state per sweep."""
  qpm = bucket.discretize(rate, depth)
  q, p, m = qpm
  tm = bucket.transition_matrix(qpm, bucket.interval_pmf(None))
  order = np.argsort(-metrics)
  ms, rs = metrics[order].astype(np.float64), rewards[order].astype(np.float64)
  n_all = len(ms)
  f = np.arange(1, n_all + 1) / n_all
  g = np.cumsum(rs) / n_all
  v = np.zeros(m - q + 1)
  pol = np.zeros(m - p + 1)
  tol_abs = tol * (ms.max() - ms.min())
  for sweep in range(1, max_sweeps + 1):
    vn = np.empty_like(v)
    newpol = np.empty_like(pol)
    for n in range(q, m + 1):
      keep = tm[n] @ v
      if n < p:
        vn[n - q] = gamma * keep
        continue
      send = tm[n - p] @ v
      score = g + gamma * (f * send + (1 - f) * keep)
      k = int(np.argmax(score))
      vn[n - q], newpol[n - p] = score[k], ms[k]
    v = vn
    if sweep > 1 and np.max(np.abs(newpol - pol)) < tol_abs:
      return newpol, sweep
    pol = newpol
  return pol, max_sweeps


def reference_simulation(th, metrics, rewards, seq, qpm):
  """A threshold policy as the original simulates it: `iid2model` (a 1-input linear model with
  Q(n, send) = metric and Q(n, keep) = threshold_n) run through the per-image model loop."""
  q, p, m = qpm
  a0 = m + 1 - q
  kernel = np.zeros((1, a0 + m - p + 1), np.float32)
  kernel[0, a0:] = 1.0
  bias = np.zeros(a0 + m - p + 1, np.float32)
  bias[p - q : a0] = th[p:]
  return reference_dqn_simulation([[kernel, bias]], metrics, rewards, seq, qpm, 0)


def reference_dqn_simulation(params, metrics, rewards, seq, qpm, nhist1):
  q, p, m = qpm
  ns = seq.shape[0]
  n = np.full(ns, m)
  hist = np.zeros((ns, nhist1 + 1), np.float32)
  a0 = m + 1 - q
  total = 0.0
  for t in range(seq.shape[1]):
    idx = seq[:, t]
    hist = np.concatenate([metrics[idx][:, None], hist[:, :-1]], axis=1)
    qv = _np_forward(params, hist)
    ok = n >= p
    row = np.clip(n - p, 0, m - p)
    send = ok & (qv[np.arange(ns), a0 + row] >= qv[np.arange(ns), n - q])
    total += rewards[idx][send].sum()
    n = np.minimum(m, n - p * send + q)
  return total / seq.size


# ------------------------------------------------------------------ benchmark


def _compute_bound(params, net: QNetwork, images: int, ours_s: float, reference_s: float) -> dict:
  """The network's arithmetic on every image at this machine's matmul peak (a 2048^2 float32 matmul,
  the launchers' options, measured now): no simulation that evaluates it on every step runs faster
  (the benchmark's DQN has a decision on nearly every step, so no step can be skipped)."""
  hidden, out = send_margin_params(params, net.config.nlayers)
  macs = sum(int(k.shape[-2] * k.shape[-1]) for k, _ in [*hidden, out])
  peak = matmul_peak(2048, 5, dict(CPU_OPTIONS))["flops_per_s"]
  bound_s = 2 * macs * images / peak
  return {
    "network_multiply_adds_per_image": macs,
    "matmul_peak_flops_per_s": peak,
    "ours_fraction_of_matmul_peak": bound_s / ours_s,
    "compute_bound_s": bound_s,
    "compute_bound_speedup_vs_numpy_reference": reference_s / bound_s,
  }


def _one_blas_thread():
  """NumPy's BLAS with one thread: for the references' small matmuls this is the fastest setting
  (with a thread pool on a busy 2-core machine one Q-iteration took 21 s instead of 1.1 s)."""
  try:
    from threadpoolctl import threadpool_limits
  except ImportError:  # pragma: no cover
    import contextlib

    return contextlib.nullcontext()
  return threadpool_limits(limits=1)


def run(args) -> dict:
  with _one_blas_thread():
    return _run(args)


def _run(args) -> dict:
  if args.only_multicam:
    return offload_multicam.run(args)
  out = _run_single(args)
  if not args.skip_multicam:
    out.update(offload_multicam.run(args))
  return out


def _run_single(args) -> dict:
  repeats = 2 if args.quick else args.repeats
  d = odata.prepare(odata.synthetic(50_000, seed=0))
  out: dict = {
    "published_original": PUBLISHED,
    "data": "synthetic metrics with the published statistics (33k train)",
  }
  out["q_iteration"], state, net = bench_q_iteration(args, d.train, repeats)
  out["mdp"], th, ref_th = bench_mdp(d, repeats)
  out["simulation"] = bench_simulation(args, d.test, th, ref_th, state, net, repeats)
  return out


RATE, DEPTH = 0.1, 4.0  # the setting every part measures (the original's README example)
PREVIOUS_BLOCK = 1000  # time steps per block of the DQN's previous simulation path (its default)


def bench_q_iteration(args, tr: odata.Split, repeats: int) -> tuple[dict, dqn.DQNState, QNetwork]:
  """One Q-iteration (and 8 settings vmapped) against the NumPy re-creation; also returns the state."""
  qpm = bucket.discretize(RATE, DEPTH)
  seq = np.asarray(
    sequences.image_sequences(jax.random.key(0), n=len(tr.metrics), num=100, length=args.pool_len, stype=1)
  )
  pool = dqn.Pool(jnp.asarray(tr.metrics[seq]), jnp.asarray(tr.rewards[seq]), jnp.ones(seq.shape, jnp.int32))
  cfg = DQNConfig()
  net = QNetwork(cfg, qpm.m + 1)
  fqi = dqn.FQIConfig()
  pmf = dqn.padded_pmf(bucket.interval_pmf(None))
  state = dqn.init_state(jax.random.key(1), net, 1e-3)
  key = jax.random.key(2)
  holder = {"s": state}

  def ours_one():
    holder["s"], met = dqn.q_iteration(holder["s"], key, qpm.q, qpm.p, qpm.m, pool, pmf, net=net, fqi=fqi)
    jax.block_until_ready(met)

  ours_q = measure(ours_one, repeats=repeats, warmup=1)
  ours_q8 = _bench_eight_settings(cfg, fqi, pool, pmf, key, repeats)
  rng = np.random.default_rng(0)
  a0 = qpm.m + 1 - qpm.q
  flat = a0 + qpm.m - qpm.p + 1
  params = _np_init(rng, [cfg.in_size] + [64] * 5 + [flat])
  adam = [[[np.zeros_like(w), np.zeros_like(w)], [np.zeros_like(b), np.zeros_like(b)]] for w, b in params]
  tmat = bucket.transition_matrix(qpm, bucket.interval_pmf(None)).astype(np.float32)
  pm, pr = np.asarray(pool.metrics), np.asarray(pool.rewards)
  ref_q = measure(
    lambda: reference_q_iteration(params, adam, pm, pr, qpm, tmat, rng, 0),
    repeats=max(1, repeats // 2),
    warmup=0,
  )
  res = {
    "tuples": fqi.gbsz * fqi.ngdup,
    "adam_steps": fqi.ngdup,
    "ours_median_s": ours_q["median_s"],
    "numpy_reference_median_s": ref_q["median_s"],
    "speedup_vs_numpy_reference": ref_q["median_s"] / ours_q["median_s"],
    "speedup_vs_published_original": [t / ours_q["median_s"] for t in PUBLISHED["q_iteration_s"]],
    "target": ">= 10x and <= 0.13 s",
    "meets_0.13s": ours_q["median_s"] <= 0.13,
    "vmapped_8_settings_median_s": ours_q8["median_s"],
    "vmapped_8_settings_iterations_per_s": 8 / ours_q8["median_s"],
    "single_setting_iterations_per_s": 1.0 / ours_q["median_s"],
  }
  return res, holder["s"], net


def _bench_eight_settings(cfg: DQNConfig, fqi: dqn.FQIConfig, pool, pmf, key, repeats: int) -> dict:
  """Eight bucket settings as rows of one vmapped program (padded to the largest m)."""
  rows = 8
  settings = [(0.05, 1), (0.05, 5), (0.1, 1), (0.1, 4), (0.25, 2), (0.25, 5), (0.15, 2.5), (0.1, 2)]
  qs = [bucket.discretize(r, b) for r, b in settings]
  net8 = QNetwork(cfg, max(x.m for x in qs) + 1)
  st8 = dqn.init_rows(jax.random.split(jax.random.key(3), rows), net8, jnp.full((rows,), 1e-3))
  step8 = dqn.make_batched_iteration(net8, fqi)
  q8, p8, m8 = (jnp.asarray([x[j] for x in qs], jnp.int32) for j in range(3))
  keys8 = jax.random.split(key, rows)
  h8 = {"s": st8}

  def ours_eight():
    h8["s"], met = step8(h8["s"], keys8, q8, p8, m8, pool, pmf)
    jax.block_until_ready(met)

  return measure(ours_eight, repeats=repeats, warmup=1)


def bench_mdp(d: odata.MetricsData, repeats: int) -> tuple[dict, np.ndarray, np.ndarray]:
  """The MDP solve against the full-scan value iteration; also returns both threshold vectors."""
  tr, ts = d.train, d.test
  qpm = bucket.discretize(RATE, DEPTH)
  ours_mdp = measure(lambda: mdp.thresholds(tr.metrics, tr.rewards, RATE, DEPTH), repeats=repeats, warmup=1)
  th, info = mdp.thresholds(tr.metrics, tr.rewards, RATE, DEPTH, return_info=True)
  t0 = time.perf_counter()
  ref_pol, ref_sweeps = reference_mdp(tr.metrics, tr.rewards, RATE, DEPTH)
  ref_mdp_s = time.perf_counter() - t0
  w = ts.wcost.mean()
  tseq = np.asarray(
    sequences.image_sequences(jax.random.key(7), n=len(ts.metrics), num=100, length=20_000, stype=0)
  )
  ref_th = np.full(qpm.m + 1, np.inf)
  ref_th[qpm.p :] = ref_pol
  loss_ours = w - simulate.run(th, ts.metrics, ts.rewards, tseq, None, RATE, DEPTH)
  loss_ref = w - simulate.run(ref_th, ts.metrics, ts.rewards, tseq, None, RATE, DEPTH)
  res = {
    "ours_median_s": ours_mdp["median_s"],
    "ours_sweeps": info["sweeps"],
    "numpy_reference_s": ref_mdp_s,
    "numpy_reference_sweeps": ref_sweeps,
    "speedup_vs_numpy_reference": ref_mdp_s / ours_mdp["median_s"],
    "speedup_vs_published_original": PUBLISHED["mdp_s"] / ours_mdp["median_s"],
    "speedup_per_sweep_vs_reference": (ref_mdp_s / ref_sweeps) / (ours_mdp["median_s"] / info["sweeps"]),
    "max_threshold_difference": float(np.max(np.abs(th[qpm.p :] - ref_pol))),
    "iid_loss_ours_vs_reference_thresholds": [loss_ours, loss_ref],
    "target": ">= 100x",
  }
  return res, th, ref_th


def _numpy_dqn_params(params, qpm) -> list:
  """The DQN's parameters as NumPy [kernel, bias] pairs, its outputs in the original's packed layout."""
  out = [
    [np.asarray(params[f"dense{i}"]["kernel"]), np.asarray(params[f"dense{i}"]["bias"])] for i in range(5)
  ]
  ko, bo = np.asarray(params["out"]["kernel"]), np.asarray(params["out"]["bias"])
  s_ = qpm.m + 1
  cols = np.r_[np.arange(qpm.q, s_), s_ + np.arange(qpm.p, s_)]
  out.append([ko[:, cols], bo[cols]])
  return out


def bench_simulation(
  args, ts: odata.Split, th, ref_th, state: dqn.DQNState, net: QNetwork, repeats: int
) -> dict:
  """The threshold policy and the DQN on 100 x 100k streams against the per-image NumPy loops."""
  qpm = bucket.discretize(RATE, DEPTH)
  sseq = np.asarray(
    sequences.image_sequences(jax.random.key(8), n=len(ts.metrics), num=100, length=100_000, stype=1)
  )
  images = sseq.size
  last = {}  # the measured runs' results (their decision fractions are reported below)
  ours_sim = measure(
    lambda: last.update(mdp=simulate.simulate(th, ts.metrics, ts.rewards, sseq, None, RATE, DEPTH)),
    repeats=repeats,
    warmup=1,
  )
  ref_len = min(args.ref_len, 1000 if args.quick else args.ref_len)
  t0 = time.perf_counter()
  reference_simulation(ref_th, ts.metrics, ts.rewards, sseq[:, :ref_len], qpm)
  ref_sim_per_image = (time.perf_counter() - t0) / (100 * ref_len)
  # Work removal: Q values matter only at decisions (n >= p); the fraction bounds what skipping the
  # network elsewhere could save (the MDP's fraction: where a trained DQN that behaves like it lands).
  dqn_res = bench_dqn_simulation(ts, sseq, state, net, max(100, ref_len // 5), repeats, last)
  mdp_dec = last["mdp"]["decision_fraction"]
  return {
    "streams": list(sseq.shape),
    "threshold_policy": {
      "ours_median_s": ours_sim["median_s"],
      "ours_images_per_s": images / ours_sim["median_s"],
      "numpy_reference_images_per_s": 1.0 / ref_sim_per_image,
      "numpy_reference_measured_on": [100, ref_len],
      "numpy_reference_extrapolated_s": ref_sim_per_image * images,
      "speedup_vs_numpy_reference": ref_sim_per_image * images / ours_sim["median_s"],
      "speedup_vs_published_original": [t / ours_sim["median_s"] for t in PUBLISHED["simulation_s"]],
    },
    "dqn_policy": {
      **dqn_res,
      "mdp_decision_fraction": mdp_dec,
      "network_work_removal_bound_at_mdp_fraction": 1.0 / max(mdp_dec, 1e-9),
    },
    "target": ">= 20x in images per second",
  }


def bench_dqn_simulation(ts, sseq, state, net: QNetwork, ref_len: int, repeats: int, last: dict) -> dict:
  """The DQN's simulation (fused path), the path it replaced as it was (`fused=False`: gathered
  features, the 2 S outputs, blocks of 1000 steps, XLA's default options) and the NumPy loop on
  the streams' first `ref_len` images, interleaved round by round (one call of each per round)."""
  qpm = bucket.discretize(RATE, DEPTH)
  pol = simulate.DQNPolicy(state.params, net)
  params = _numpy_dqn_params(state.params, qpm)
  head = sseq[:, :ref_len]

  def run(fused: bool):
    block = None if fused else PREVIOUS_BLOCK
    return lambda: last.update(
      {
        ("dqn" if fused else "dqn_unfused"): simulate.simulate(
          pol, ts.metrics, ts.rewards, sseq, None, RATE, DEPTH, block=block, fused=fused
        )
      }
    )

  timed = measure_interleaved(
    {
      "fused": run(True),
      "unfused": run(False),
      "reference": lambda: reference_dqn_simulation(
        params, ts.metrics, ts.rewards, head, qpm, net.config.nhist1
      ),
    },
    repeats=max(2, repeats),
    warmup=1,
  )
  images = sseq.size
  ours, prev = timed["fused"]["median_s"], timed["unfused"]["median_s"]
  ref_per_image = timed["reference"]["median_s"] / head.size
  dec = last["dqn"]["decision_fraction"]
  return {
    "ours_median_s": ours,
    "ours_times_s": timed["fused"],
    "ours_images_per_s": images / ours,
    "previous_jax_path_median_s": prev,
    "speedup_vs_previous_jax_path": prev / ours,
    "same_result_as_previous_jax_path": last["dqn"] == last["dqn_unfused"],
    "numpy_reference_images_per_s": 1.0 / ref_per_image,
    "numpy_reference_measured_on": list(head.shape),
    "numpy_reference_median_s": timed["reference"]["median_s"],
    "speedup_vs_numpy_reference": ref_per_image * images / ours,
    "previous_jax_path_speedup_vs_numpy_reference": ref_per_image * images / prev,
    "speedup_vs_published_original": [t / ours for t in PUBLISHED["simulation_s"]],
    "target": ">= 8x the NumPy reference",
    **_compute_bound(state.params, net, images, ours, ref_per_image * images),
    "decision_fraction": dec,
    "network_work_removal_bound": 1.0 / max(dec, 1e-9),
  }
