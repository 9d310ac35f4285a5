"""The training state and the loop every technique reuses.

A technique supplies a jitted `train_step(state, batch, rng) -> (state, metrics)`
and an `evaluate(state) -> metrics` function; `fit` runs epochs with a tqdm bar,
evaluates every `eval_every` steps, appends metrics to `metrics.jsonl`, saves
orbax checkpoints every `checkpoint_every` steps (keeping `keep`), resumes from
the newest checkpoint in the workdir, and stops with `TrainingDivergedError`
when the loss turns NaN or infinite.

Resuming is exact: the batch order of epoch e is drawn from
`fold_in(data_key, e)` and the step's randomness is `fold_in(step_key, step)`,
so a killed run restarted from its checkpoint retraces the uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from common import checkpoint as ckpt
from common import data as data_lib
from common import sharding
from common.errors import DataError, TrainingDivergedError


@flax.struct.dataclass
class TrainState:
  """What is carried between training steps (a pytree)."""

  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any


def create_train_state(variables: Mapping[str, Any], tx: optax.GradientTransformation) -> TrainState:
  """A fresh state from Flax `variables` ({"params": ..., "batch_stats": ...})."""
  params = variables["params"]
  batch_stats = variables.get("batch_stats", {})
  return TrainState(
    step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats, opt_state=tx.init(params)
  )


def apply_gradients(state: TrainState, grads: Any, tx: optax.GradientTransformation, **changes) -> TrainState:
  """One optimiser update; `changes` replaces other fields (e.g. batch_stats)."""
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state, **changes)


def cross_entropy(logits: jax.Array, labels: jax.Array, mask: jax.Array | None = None) -> jax.Array:
  """Mean softmax cross-entropy over the (masked) batch."""
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  if mask is None:
    return losses.mean()
  return (losses * mask).sum() / jnp.maximum(mask.sum(), 1.0)


def accuracy(logits: jax.Array, labels: jax.Array, mask: jax.Array | None = None) -> jax.Array:
  """Top-1 accuracy over the (masked) batch."""
  hits = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
  if mask is None:
    return hits.mean()
  return (hits * mask).sum() / jnp.maximum(mask.sum(), 1.0)


def evaluate_batches(
  eval_step: Callable[[Any, dict], dict], state: Any, ds: data_lib.Dataset, batch_size: int
) -> dict[str, float]:
  """Runs `eval_step(state, batch) -> {name: sum over batch}` over a data set.

  `eval_step` returns sums over the masked batch (not means) so the padded last
  batch is counted exactly; the result divides by the number of examples. When
  `state` is replicated over several devices, the batch is rounded up to a
  multiple of the device count (the extra rows are masked padding) and sharded.
  """
  totals: dict[str, float] = {}
  mesh, rows = None, None
  if sharding.spans_devices(state):  # evaluation runs where the state lives
    mesh, rows = sharding.make_mesh(), sharding.process_rows()
    batch_size = -(-batch_size // jax.device_count()) * jax.device_count()
  for batch in data_lib.batches(ds, batch_size, drop_last=False, rows=rows):
    if mesh is not None:
      batch = sharding.shard_batch(batch, mesh)
    out = jax.device_get(eval_step(state, batch))
    for k, v in out.items():
      totals[k] = totals.get(k, 0.0) + float(v)
  return {k: v / len(ds) for k, v in totals.items()}


class MetricsWriter:
  """Appends one JSON object per line to `workdir/metrics.jsonl` (on the primary process only).

  A run killed in the middle of a write can leave a torn last line (no newline, or not valid
  JSON). `read` drops it with a warning, and the next `write` cuts it off before appending, so
  one torn line never breaks a later rerun. A bad line anywhere but the end is a damaged file:
  `read` raises `DataError` naming the file and the line.
  """

  def __init__(self, workdir: str | os.PathLike):
    self.path = Path(workdir) / "metrics.jsonl"
    self.path.parent.mkdir(parents=True, exist_ok=True)
    self._tail_checked = False

  def _repair_tail(self) -> None:
    """Cuts off a torn last line (or ends a whole one with its newline) before appending."""
    if not self.path.exists():
      return
    data = self.path.read_bytes()
    start = data.rstrip(b"\n").rfind(b"\n") + 1
    last = data[start:].strip()
    if not last:
      return
    try:
      whole = isinstance(json.loads(last), dict)
    except ValueError:
      whole = False
    if whole and data.endswith(b"\n"):
      return
    with open(self.path, "r+b") as f:
      if whole:
        f.seek(0, os.SEEK_END)
        f.write(b"\n")
      else:
        f.truncate(start)

  def write(self, step: int, metrics: Mapping[str, Any], **extra) -> None:
    if not sharding.is_primary():
      return
    row = {"step": int(step), "time": time.time(), **extra}
    for k, v in metrics.items():
      v = np.asarray(v)
      row[k] = v.item() if v.size == 1 else v.tolist()
    if not self._tail_checked:  # only a file left by an earlier process can end torn
      self._repair_tail()
      self._tail_checked = True
    with open(self.path, "a") as f:
      f.write(json.dumps(row) + "\n")
      f.flush()

  def read(self) -> list[dict[str, Any]]:
    if not self.path.exists():
      return []
    with open(self.path, "rb") as f:
      lines = [line for line in f.read().split(b"\n") if line.strip()]
    rows = []
    for i, line in enumerate(lines):
      try:
        row = json.loads(line)
        if not isinstance(row, dict):
          raise ValueError("not a JSON object")
      except ValueError as e:
        if i == len(lines) - 1:
          warnings.warn(f"{self.path}: dropped a torn last line (a run stopped mid-write)", stacklevel=2)
          break
        raise DataError(
          f"{self.path} line {i + 1} is not a JSON object ({e}); the file is damaged: "
          "remove the line or the file (the checkpoints are kept), then rerun"
        ) from None
      rows.append(row)
    return rows


@dataclasses.dataclass(frozen=True)
class LoopConfig:
  """Settings of `fit`.

  Attributes:
    num_epochs: epochs over the training set.
    batch_size: examples per step.
    eval_every: evaluate every this many steps (and at the end); 0 = only at the end.
    log_every: pull training metrics to the host (and check for NaN) this often.
    checkpoint_every: save every this many steps (and at the end); 0 = only at the end.
    keep: checkpoints kept.
    desc: progress-bar label.
    max_steps: stop after this many steps in total (None = all epochs).
  """

  num_epochs: int
  batch_size: int
  eval_every: int = 0
  log_every: int = 10
  checkpoint_every: int = 0
  keep: int = 3
  desc: str = "train"
  max_steps: int | None = None


def _check_finite(step: int, metrics: Mapping[str, Any]) -> None:
  for k, v in metrics.items():
    if "loss" in k and not math.isfinite(float(np.asarray(v).mean())):
      raise TrainingDivergedError(
        f"{k} became {float(np.asarray(v).mean())} at step {step}; lower the learning rate "
        "or check the inputs (the last finite checkpoint is kept in the workdir)"
      )


check_finite = _check_finite  # public, for loops that cannot go through `fit` (offload's Q-iteration)


class _TrainLog:
  """Training rows of metrics.jsonl: the steps' device metrics pulled to the host a group at a
  time, checked for NaN, averaged and written with the examples per second since the last group."""

  def __init__(self, writer: MetricsWriter, batch_size: int, bar, tags: dict):
    self.writer, self.batch_size, self.bar, self.tags = writer, batch_size, bar, tags
    self.devices, self.processes = jax.device_count(), jax.process_count()
    self.pending: list[dict] = []
    self.restart_clock()

  def restart_clock(self) -> None:
    """Time spent evaluating or checkpointing is not training time."""
    self.since = time.perf_counter()

  def flush(self, step: int) -> None:
    if not self.pending:
      return
    host = jax.device_get(self.pending)
    now = time.perf_counter()
    rate = len(self.pending) * self.batch_size / max(now - self.since, 1e-9)
    means = {k: float(np.mean([np.asarray(m[k]).mean() for m in host])) for k in host[0]}
    _check_finite(step, means)
    self.writer.write(step, means, split="train", devices=self.devices, processes=self.processes,
                      examples_per_s=round(rate, 2), **self.tags)  # fmt: skip
    self.bar.set_postfix({k: f"{v:.4g}" for k, v in list(means.items())[:3]})
    self.pending.clear()
    self.since = now


@dataclasses.dataclass
class _Run:
  """What one `fit` call keeps beside the state: its keys, schedule, checkpoints, log and history."""

  loop: LoopConfig
  data_key: jax.Array
  step_key: jax.Array
  steps_per_epoch: int
  total: int
  mesh: Any
  manager: Any
  log: _TrainLog
  evaluate: Callable[[Any], Mapping[str, float]] | None
  history: list[dict[str, Any]]

  def run_eval(self, state, step: int) -> None:
    if self.evaluate is None:
      return
    metrics = dict(self.evaluate(state))
    self.log.writer.write(step, metrics, split="eval", **self.log.tags)
    self.history.append({"step": step, **metrics})

  def after_step(self, state, step: int) -> None:
    """Logging, evaluation and checkpoints due after `step` (those at the end are `finish`'s)."""
    loop = self.loop
    if step % max(loop.log_every, 1) == 0:
      self.log.flush(step)
    for every, act in ((loop.eval_every, self.run_eval), (loop.checkpoint_every, self._save)):
      if every and step % every == 0 and step < self.total:
        self.log.flush(step)
        act(state, step)
        self.log.restart_clock()

  def _save(self, state, step: int) -> None:
    ckpt.save(self.manager, step, state)

  def finish(self, state, step: int) -> None:
    self.log.flush(step)
    self.run_eval(state, step)
    if self.manager.latest_step() != step:
      ckpt.save(self.manager, step, state)


def _distribute(state, key: jax.Array, batch_size: int):
  """(state, key, mesh): replicated over the devices when there are several (mesh None otherwise)."""
  if jax.device_count() == 1:
    return state, key, None
  sharding.check_batch(batch_size)
  mesh = sharding.make_mesh()
  # the step keys split from a replicated key are replicated arrays too
  return sharding.replicate(state, mesh), sharding.replicate(key, mesh), mesh


def _train(state, train_step, train_ds: data_lib.Dataset, run: _Run, step: int):
  """Steps from `step` to `run.total` (resuming mid-epoch where a checkpoint left off)."""
  loop = run.loop
  while step < run.total:
    epoch, offset = divmod(step, run.steps_per_epoch)
    batches = data_lib.batches(
      train_ds, loop.batch_size, key=jax.random.fold_in(run.data_key, epoch), rows=sharding.process_rows()
    )
    for i, batch in enumerate(batches):
      if i < offset:
        continue
      if run.mesh is not None:
        batch = sharding.shard_batch(batch, run.mesh)
      state, metrics = train_step(state, batch, jax.random.fold_in(run.step_key, step))
      step += 1
      run.log.bar.update(1)
      run.log.pending.append(metrics)
      run.after_step(state, step)
      if step >= run.total:
        break
  run.finish(state, step)
  return state


def fit(
  state: Any,
  train_step: Callable[[Any, dict, jax.Array], tuple[Any, dict]],
  train_ds: data_lib.Dataset,
  loop: LoopConfig,
  *,
  key: jax.Array,
  workdir: str | os.PathLike,
  evaluate: Callable[[Any], Mapping[str, float]] | None = None,
  checkpoint_subdir: str = "checkpoints",
  show_progress: bool = True,
  tags: Mapping[str, Any] | None = None,
) -> tuple[Any, list[dict[str, Any]]]:
  """Trains `state` and returns (final state, eval history).

  Args:
    state: a pytree with an integer `step` field (e.g. `TrainState`).
    train_step: jitted `(state, batch, rng) -> (state, metrics)`; metrics holds
      device scalars, at least one key containing "loss".
    train_ds: training data.
    loop: loop settings.
    key: the run's training key; split here into the data-order and step keys.
    workdir: the run's directory; checkpoints go to workdir/checkpoint_subdir.
    evaluate: `state -> {name: float}`, run every `loop.eval_every` steps and at the end.
    checkpoint_subdir: lets one workdir hold several stages.
    show_progress: draw a tqdm bar.
    tags: entries added to every row this call writes to metrics.jsonl (e.g. {"stage": "init"}),
      so rows of several trainings in one workdir can be told apart.

  With several devices the state is replicated over them and `train_step`
  (built with `common.sharding.jit_step`) shards each batch; with several
  processes each one reads only its rows of every batch, all write one orbax
  checkpoint together, and the returned state is a local copy on each. Training
  rows of metrics.jsonl carry `devices`, `processes` and `examples_per_s`.

  Raises:
    ConfigError: the batch size does not divide over the devices.
    TrainingDivergedError: a loss became NaN or infinite.
  """
  state, key, mesh = _distribute(state, key, loop.batch_size)
  manager = ckpt.make_manager(Path(workdir) / checkpoint_subdir, max_to_keep=loop.keep)
  state, _ = ckpt.restore_latest(manager, state)
  data_key, step_key = jax.random.split(key)
  spe = data_lib.num_batches(len(train_ds), loop.batch_size, drop_last=True)
  total = spe * loop.num_epochs if loop.max_steps is None else min(spe * loop.num_epochs, loop.max_steps)
  step = int(jax.device_get(state.step))
  bar = tqdm(total=total, initial=step, desc=loop.desc, dynamic_ncols=True,
             disable=not show_progress or not sharding.is_primary())  # fmt: skip
  log = _TrainLog(MetricsWriter(Path(workdir)), loop.batch_size, bar, dict(tags or {}))
  run = _Run(loop, data_key, step_key, spe, total, mesh, manager, log, evaluate, [])
  try:
    state = _train(state, train_step, train_ds, run, step)
  finally:
    bar.close()
    manager.close()
  if jax.process_count() > 1:  # what follows training (exports, reports) runs on each process alone
    state = sharding.to_local(state)
  return state, run.history
