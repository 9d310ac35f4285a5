"""Training of the DQN by fitted Q-iteration: `train(config, data, workdir)` and `restore_dqn`.

One DQN per bucket setting (rates[i], depths[i]) and per seed, all rows trained in one vmapped,
jitted program (`offload.dqn.make_batched_iteration`), with orbax checkpoints in
workdir/checkpoints: a rerun resumes, raising `config.dqn.iterations` continues, and a new
`config.dqn.learning_rate` applies on resume (the original's two-phase schedule).

The loop shares common.train's pieces (the `MetricsWriter` rows of metrics.jsonl with devices,
processes and examples_per_s, `check_finite`, `common.checkpoint`) but not `common.train.fit`:
fit runs epochs of batches drawn from a data set and counts one scalar `state.step`, while a
Q-iteration draws its own tuples from the training pool by key, every row keeps its own
iteration count, and each metrics row keeps the per-row losses.
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
from common import train as train_lib
from offload import bucket, dqn, sequences
from offload import data as odata
from offload.models import DQNConfig, QNetwork

ORDERS = {"iid": 0, "location_reset": 1}  # config.stream.order -> the original's stype
ARRIVALS = {"periodic": 0, "markov": 1}  # config.stream.arrivals -> the original's itype


def dqn_config(c: ml_collections.ConfigDict) -> DQNConfig:
  d = c.dqn
  return DQNConfig(
    nhist1=d.history_metrics, nhist2=d.history_intervals, nlayers=d.num_layers, nhidden=d.hidden_units
  )


def settings(c: ml_collections.ConfigDict) -> list[tuple[float, float, bucket.QPM]]:
  """(rate, depth, QPM) per bucket setting."""
  pairs = zip(c.bucket.rates, c.bucket.depths, strict=True)
  return [(float(r), float(b), bucket.discretize(float(r), float(b))) for r, b in pairs]


def network(c: ml_collections.ConfigDict) -> QNetwork:
  """The Q network, its outputs sized for the largest m of the settings."""
  return QNetwork(dqn_config(c), max(s[2].m for s in settings(c)) + 1)


def keys(c: ml_collections.ConfigDict) -> dict[str, jax.Array]:
  """The run's keys: training pool, (validation), test streams, initialisation, iterations."""
  root = jax.random.key(c.seed)
  names = ("pool", "val", "test", "init", "iterate")
  return dict(zip(names, jax.random.split(root, len(names)), strict=True))


def streams(
  c: ml_collections.ConfigDict, key, n: int, num: int, length: int
) -> tuple[np.ndarray, np.ndarray]:
  """(image indices, inter-arrival times), [num, length] each, as config.stream says."""
  s = c.stream
  k_seq, k_int = jax.random.split(key)
  seq = sequences.image_sequences(
    k_seq, n=n, num=num, length=length, stype=ORDERS[s.order], spread=s.spread, rprob=s.reset_prob
  )
  iv = sequences.interval_sequences(
    k_int, num=num, length=length, itype=ARRIVALS[s.arrivals], int1=s.interval_state0,
    int2=s.interval_state1, tprob1=s.leave_prob_state0, tprob2=s.leave_prob_state1,
  )  # fmt: skip
  return np.asarray(seq), np.asarray(iv)


def training_pool(c: ml_collections.ConfigDict, split: odata.Split) -> tuple[dqn.Pool, np.ndarray]:
  """The training pool of config.stream.train_streams x train_length, and its intervals."""
  s = c.stream
  seq, iv = streams(c, keys(c)["pool"], len(split.metrics), s.train_streams, s.train_length)
  pool = dqn.Pool(jnp.asarray(split.metrics[seq]), jnp.asarray(split.rewards[seq]), jnp.asarray(iv))
  return pool, iv


def rows(c: ml_collections.ConfigDict) -> list[tuple[int, int]]:
  """Rows = settings x seeds: (setting index, seed index) per row."""
  return [(s, k) for s in range(len(c.bucket.rates)) for k in range(c.dqn.num_seeds)]


def init_state(c: ml_collections.ConfigDict, net: QNetwork) -> dqn.DQNState:
  rs = rows(c)
  init_keys = jnp.stack([jax.random.fold_in(keys(c)["init"], s * 1000 + k) for s, k in rs])
  return dqn.init_rows(init_keys, net, jnp.full((len(rs),), c.dqn.learning_rate, jnp.float32))


def train(
  c: ml_collections.ConfigDict, d: odata.MetricsData, workdir: str | Path, *, show_progress: bool = True
) -> dict:
  """Trains (or resumes) the DQN rows; returns {"rows", "loss", "iterations", "seconds_per_iteration"}."""
  workdir = Path(workdir)
  setts, rs, cd = settings(c), rows(c), c.dqn
  net = network(c)
  pool, tint = training_pool(c, d.train)
  pmf = dqn.padded_pmf(bucket.interval_pmf(None if c.stream.arrivals == "periodic" else tint))
  qs, ps, ms = (jnp.asarray([setts[s][2][j] for s, _ in rs], jnp.int32) for j in range(3))
  it_keys = jnp.stack([jax.random.fold_in(keys(c)["iterate"], s * 1000 + k) for s, k in rs])
  manager = ckpt.make_manager(workdir / "checkpoints", max_to_keep=2)
  state, _ = ckpt.restore_latest(manager, init_state(c, net))
  state = dqn.set_learning_rate(state, cd.learning_rate)
  step_fn = dqn.make_batched_iteration(net, dqn.FQIConfig(cd.batch_size, cd.steps_per_iteration, cd.discount))
  writer = train_lib.MetricsWriter(workdir)
  it = int(np.asarray(state.it)[0])
  bar = tqdm(
    total=cd.iterations,
    initial=it,
    desc="offload: Q-iteration",
    disable=not show_progress,
    dynamic_ncols=True,
  )
  t0, done, last = time.time(), 0, {}
  t_row, it_row = t0, it  # examples/s of the metrics rows: rows x batch_size x steps regression examples
  try:
    while it < cd.iterations:
      state, met = step_fn(state, it_keys, qs, ps, ms, pool, pmf)
      it += 1
      done += 1
      bar.update(1)
      if (cd.log_every and it % cd.log_every == 0) or it == cd.iterations:
        last = {k: np.asarray(v) for k, v in met.items()}
        train_lib.check_finite(it, last)
        rate = (
          len(rs) * cd.batch_size * cd.steps_per_iteration * (it - it_row) / max(time.time() - t_row, 1e-9)
        )
        dp = {
          "devices": jax.device_count(),
          "processes": jax.process_count(),
          "examples_per_s": round(rate, 2),
        }
        writer.write(it, {"loss": last["loss"], "target_span": last["target_span"]}, split="train", **dp)
        t_row, it_row = time.time(), it
        bar.set_postfix(loss=f"{float(last['loss'].mean()):.4g}")
      if cd.checkpoint_every and it % cd.checkpoint_every == 0 and it < cd.iterations:
        ckpt.save(manager, it, state)
    if manager.latest_step() != it:
      ckpt.save(manager, it, state)
  finally:
    bar.close()
    manager.close()
  sec = (time.time() - t0) / max(done, 1)
  return {"rows": rs, "loss": last.get("loss"), "iterations": it, "seconds_per_iteration": sec}


def trained_iterations(workdir: str | Path) -> int | None:
  """The Q-iterations of the newest checkpoint in workdir/checkpoints (None: none yet)."""
  directory = Path(workdir) / "checkpoints"
  if not directory.exists():
    return None
  manager = ckpt.make_manager(directory, max_to_keep=2)
  try:
    step = manager.latest_step()
  finally:
    manager.close()
  return None if step is None else int(step)


def restore_dqn(c: ml_collections.ConfigDict, workdir: str | Path) -> tuple[QNetwork, dqn.DQNState]:
  """(net, batched state) of the finished training in workdir/checkpoints; CheckpointError if none."""
  net = network(c)
  state = ckpt.restore_finished(
    Path(workdir) / "checkpoints", init_state(c, net), run_first="edgeinfer offload train", max_to_keep=2
  )
  return net, state
