"""Training and simulation entry points: `train_and_evaluate(config, workdir)` and `simulate_and_report`.

train: metrics (digits classifiers / npz / synthetic) -> training sequences ->
the DQN for every (tr, tb) setting and seed, trained by fitted Q-iteration in one
vmapped, jitted program, with orbax checkpoints in workdir/checkpoints (a rerun
resumes; raising --config.maxiter continues; a new --config.lr applies on resume).
simulate: every policy on the test streams -> workdir/result.npz, results.json,
loss_vs_rate.png and report.md.
"""

from __future__ import annotations

import time
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from tqdm.auto import tqdm

from common import checkpoint as ckpt
from common import cli, report
from common import config as cfg_lib
from common import train as train_lib
from common.errors import CheckpointError, ConfigError
from offload import bucket, dqn, mdp, sequences, simulate
from offload import data as odata
from offload.models import DQNConfig, QNetwork


def validate(c: ml_collections.ConfigDict) -> None:
  """Checks every key (ConfigError names key, value and allowed range)."""
  cfg_lib.check_range(c, "seed", 0, integer=True)
  cfg_lib.check_choice(c, "source", ["digits", "npz", "synthetic"])
  if c.source == "npz" and not c.metrics_file:
    raise ConfigError("config.metrics_file is empty: source 'npz' needs the path of a metrics npz file")
  cfg_lib.check_range(c, "fold", 0, integer=True)
  cfg_lib.check_range(c, "classifiers.classifier_fraction", 0.05, 0.95)
  cfg_lib.check_range(c, "classifiers.folds", 2, 10, integer=True)
  cfg_lib.check_choice(c, "classifiers.ctype", [0, 1, 2])
  cfg_lib.check_range(c, "classifiers.num_epochs", 1, 10_000, integer=True)
  cfg_lib.check_positive_ints(c, "classifiers.widths_weak")
  cfg_lib.check_positive_ints(c, "classifiers.widths_strong")
  if c.source == "digits" and c.fold >= c.classifiers.folds:
    raise ConfigError(f"config.fold = {c.fold}: must be in [0, {c.classifiers.folds - 1}]")
  tr, tb = list(c.tr), list(c.tb)
  if not tr or len(tr) != len(tb):
    raise ConfigError(f"config.tr = {tr} and config.tb = {tb}: must be non-empty lists of equal length")
  for i, (r, b) in enumerate(zip(tr, tb, strict=True)):
    if not (isinstance(r, int | float) and 0 < r < 1):
      raise ConfigError(f"config.tr[{i}] = {r!r}: must be in (0, 1) tokens per slot")
    if not (isinstance(b, int | float) and 1 <= b <= 100):
      raise ConfigError(f"config.tb[{i}] = {b!r}: must be in [1, 100] tokens")
  cfg_lib.check_choice(c, "stype", [0, 1])
  cfg_lib.check_choice(c, "itype", [0, 1])
  cfg_lib.check_range(c, "spread", 0.0, 1.0)
  cfg_lib.check_range(c, "rprob", 0.0, 1.0)
  cfg_lib.check_range(c, "int1", 1, 100, integer=True)
  cfg_lib.check_range(c, "int2", 1, 100, integer=True)
  cfg_lib.check_range(c, "tprob1", 0.0, 1.0, lo_open=True)
  cfg_lib.check_range(c, "tprob2", 0.0, 1.0, lo_open=True)
  cfg_lib.check_range(c, "nhist1", 0, 10_000, integer=True)
  cfg_lib.check_range(c, "nhist2", -1, 10_000, integer=True)
  cfg_lib.check_range(c, "nlayers", 1, 64, integer=True)
  cfg_lib.check_range(c, "nhidden", 1, 65_536, integer=True)
  cfg_lib.check_range(c, "lr", 0.5, 10.0)
  cfg_lib.check_range(c, "maxiter", 0, 10_000_000, integer=True)
  cfg_lib.check_range(c, "gbsz", 1, 1 << 20, integer=True)
  cfg_lib.check_range(c, "ngdup", 1, 1 << 20, integer=True)
  cfg_lib.check_range(c, "discount", 0.0, 1.0, lo_open=True, hi_open=True)
  cfg_lib.check_range(c, "mdp_discount", 0.0, 1.0, lo_open=True, hi_open=True)
  cfg_lib.check_range(c, "num_seeds", 1, 1024, integer=True)
  for k in ("sfreq", "ckpt_every"):
    cfg_lib.check_range(c, k, 0, integer=True)
  for k in ("tnum", "tlen", "vnum", "vlen", "snum", "slen"):
    cfg_lib.check_range(c, k, 2, integer=True)


def dqn_config(c: ml_collections.ConfigDict) -> DQNConfig:
  return DQNConfig(nhist1=c.nhist1, nhist2=c.nhist2, nlayers=c.nlayers, nhidden=c.nhidden)


def settings(c: ml_collections.ConfigDict) -> list[tuple[float, float, bucket.QPM]]:
  return [
    (float(r), float(b), bucket.discretize(float(r), float(b))) for r, b in zip(c.tr, c.tb, strict=True)
  ]


def load_metrics(
  c: ml_collections.ConfigDict, workdir: Path, *, show_progress: bool = True
) -> odata.MetricsData:
  """The metrics of the configured source, prepared (z-scored, metric-sorted)."""
  if c.source == "npz":
    return odata.prepare(odata.load_npz(c.metrics_file))
  if c.source == "synthetic":
    return odata.prepare(odata.synthetic(seed=c.seed))
  path = workdir / "metrics" / f"fold{c.fold}_cost{c.classifiers.ctype}.npz"
  if not path.exists():
    from offload import classifiers

    info = classifiers.make_metrics(c, workdir, show_progress=show_progress)
    report.write_json(workdir / "metrics" / "classifiers.json", info)
  return odata.prepare(odata.load_npz(path))


def _streams(c, key, n: int, num: int, length: int):
  k_seq, k_int = jax.random.split(key)
  seq = sequences.image_sequences(
    k_seq, n=n, num=num, length=length, stype=c.stype, spread=c.spread, rprob=c.rprob
  )
  iv = sequences.interval_sequences(
    k_int, num=num, length=length, itype=c.itype, int1=c.int1, int2=c.int2, tprob1=c.tprob1, tprob2=c.tprob2
  )
  return np.asarray(seq), np.asarray(iv)


def make_pool(c, key, split: odata.Split, num: int, length: int):
  seq, iv = _streams(c, key, len(split.metrics), num, length)
  pool = dqn.Pool(jnp.asarray(split.metrics[seq]), jnp.asarray(split.rewards[seq]), jnp.asarray(iv))
  return pool, seq, iv


def _keys(c):
  root = jax.random.key(c.seed)
  names = ("pool", "val", "test", "init", "iterate")
  return dict(zip(names, jax.random.split(root, len(names)), strict=True))


def _rows(c, setts):
  """Rows = settings x seeds: (setting index, seed index) per row."""
  return [(s, k) for s in range(len(setts)) for k in range(c.num_seeds)]


def _init(c, net, keys, rows):
  init_keys = jnp.stack([jax.random.fold_in(keys["init"], s * 1000 + k) for s, k in rows])
  lrs = jnp.full((len(rows),), 10.0 ** (-c.lr), jnp.float32)
  return dqn.init_rows(init_keys, net, lrs)


def train_and_evaluate(
  c: ml_collections.ConfigDict, workdir: str | Path, *, show_progress: bool = True
) -> dict:
  """Trains the DQN rows; returns {"rows", "loss", "iterations", "seconds_per_iteration"}."""
  validate(c)
  workdir = Path(workdir)
  cli.save_config(c, workdir)
  keys = _keys(c)
  d = load_metrics(c, workdir, show_progress=show_progress)
  setts = settings(c)
  net = QNetwork(dqn_config(c), max(s[2].m for s in setts) + 1)
  pool, _, tint = make_pool(c, keys["pool"], d.train, c.tnum, c.tlen)
  pmf = dqn.padded_pmf(bucket.interval_pmf(None if c.itype == 0 else tint))
  rows = _rows(c, setts)
  qs, ps, ms = (jnp.asarray([setts[s][2][j] for s, _ in rows], jnp.int32) for j in range(3))
  it_keys = jnp.stack([jax.random.fold_in(keys["iterate"], s * 1000 + k) for s, k in rows])
  state = _init(c, net, keys, rows)
  manager = ckpt.make_manager(workdir / "checkpoints", max_to_keep=2)
  state, start = ckpt.restore_latest(manager, state)
  state = dqn.set_learning_rate(state, 10.0 ** (-c.lr))
  step_fn = dqn.make_batched_iteration(net, dqn.FQIConfig(c.gbsz, c.ngdup, c.discount))
  writer = train_lib.MetricsWriter(workdir)
  it = int(np.asarray(state.it)[0])
  bar = tqdm(
    total=c.maxiter, initial=it, desc="offload: Q-iteration", disable=not show_progress, dynamic_ncols=True
  )
  t0, done, last = time.time(), 0, {}
  t_row, it_row = t0, it  # examples/s of the metrics rows: rows x gbsz x ngdup regression examples
  try:
    while it < c.maxiter:
      state, met = step_fn(state, it_keys, qs, ps, ms, pool, pmf)
      it += 1
      done += 1
      bar.update(1)
      if (c.sfreq and it % c.sfreq == 0) or it == c.maxiter:
        last = {k: np.asarray(v) for k, v in met.items()}
        if not np.all(np.isfinite(last["loss"])):
          from common.errors import TrainingDivergedError

          raise TrainingDivergedError(
            f"Q-iteration loss became {last['loss']} at iteration {it}; raise --config.lr"
          )
        rate = len(rows) * c.gbsz * c.ngdup * (it - it_row) / max(time.time() - t_row, 1e-9)
        dp = {
          "devices": jax.device_count(),
          "processes": jax.process_count(),
          "examples_per_s": round(rate, 2),
        }
        writer.write(it, {"loss": last["loss"], "target_span": last["target_span"]}, split="train", **dp)
        t_row, it_row = time.time(), it
        bar.set_postfix(loss=f"{float(last['loss'].mean()):.4g}")
      if c.ckpt_every and it % c.ckpt_every == 0 and it < c.maxiter:
        ckpt.save(manager, it, state)
    if manager.latest_step() != it:
      ckpt.save(manager, it, state)
  finally:
    bar.close()
    manager.close()
  sec = (time.time() - t0) / max(done, 1)
  return {"rows": rows, "loss": last.get("loss"), "iterations": it, "seconds_per_iteration": sec}


def restore_dqn(c, workdir: Path):
  """(net, batched state, rows) from workdir/checkpoints; CheckpointError if there is none."""
  keys = _keys(c)
  setts = settings(c)
  net = QNetwork(dqn_config(c), max(s[2].m for s in setts) + 1)
  rows = _rows(c, setts)
  like = _init(c, net, keys, rows)
  manager = ckpt.make_manager(workdir / "checkpoints", max_to_keep=2)
  try:
    state, step = ckpt.restore_latest(manager, like)
  finally:
    manager.close()
  if step is None:
    raise CheckpointError(
      f"no DQN checkpoint in {workdir / 'checkpoints'}; run `python -m offload.main train` first"
    )
  return net, state, rows


POLICIES = ("weak", "strong", "lower_bound", "baseline", "mdp", "dqn")


def evaluate_policies(c, d: odata.MetricsData, tint, seq, iv, setts, net=None, state=None, rows=None) -> dict:
  """Loss, offload fraction and occupancy of every policy for every setting on streams (seq, iv)."""
  ts = d.test
  ms_seen, rs_seen = ts.metrics[seq], ts.rewards[seq]
  weak, strong = float(ts.wcost[seq].mean()), float(ts.scost[seq].mean())
  intervals_tr = None if c.itype == 0 else tint
  tau = 1.0 if c.itype == 0 else float(np.mean(tint))
  out = {p: {"loss": [], "offload_fraction": [], "occupancy": []} for p in POLICIES}
  for si, (r, b, _) in enumerate(setts):
    thr = mdp.thresholds(d.train.metrics, d.train.rewards, r, b, gamma=c.mdp_discount, intervals=intervals_tr)
    base_th = mdp.baseline_threshold(d.train.metrics, r, tau)
    res = {
      "mdp": simulate.simulate(thr, ts.metrics, ts.rewards, seq, iv, r, b),
      "baseline": simulate.simulate(
        mdp.baseline_thresholds(d.train.metrics, r, b, tau), ts.metrics, ts.rewards, seq, iv, r, b
      ),
      "weak": {"reward": 0.0, "offload_fraction": 0.0, "occupancy": np.nan},
      "strong": {"reward": weak - strong, "offload_fraction": 1.0, "occupancy": np.nan},
      "lower_bound": {
        "reward": mdp.lower_bound_reward(ms_seen, rs_seen, base_th),
        "offload_fraction": float(np.mean(ms_seen > base_th)),
        "occupancy": np.nan,
      },
    }
    if state is not None:
      sims = []
      for ri, (s, _) in enumerate(rows):
        if s == si:
          params = jax.tree.map(lambda x, ri=ri: x[ri], state.params)
          sims.append(
            simulate.simulate(simulate.DQNPolicy(params, net), ts.metrics, ts.rewards, seq, iv, r, b)
          )
      res["dqn"] = {k: float(np.mean([x[k] for x in sims])) for k in sims[0]}
      res["dqn"]["per_seed_reward"] = [x["reward"] for x in sims]
    for p in POLICIES:
      if p in res:
        out[p]["loss"].append(weak - res[p]["reward"])
        out[p]["offload_fraction"].append(res[p]["offload_fraction"])
        out[p]["occupancy"].append(res[p]["occupancy"])
    if "dqn" in res:
      out["dqn"].setdefault("per_seed_loss", []).append([weak - x for x in res["dqn"]["per_seed_reward"]])
    out.setdefault("mdp_thresholds", []).append(thr.tolist())
  out["weak_loss"], out["strong_loss"] = weak, strong
  return out
