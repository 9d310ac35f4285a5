"""Branch parallelism on this CPU's cores: pinned per-branch LiteRT interpreters and fork/join costs.

`PinnedRunner` runs the exported segments of a stretched model (`export.export_segments`)
the way the artifact's runtime does on a phone: the calling thread runs branch 0 of
every stage, one worker thread per further branch runs that branch, each thread pinned
to its own core with `os.sched_setaffinity` (on Linux the affinity of pid 0 is the
calling thread's), every interpreter on one LiteRT thread. LiteRT releases the GIL
while it invokes, so the branches overlap; what remains serial per stage is the
hand-off of the stage input to the workers, the wait for them and the concat.

`stage_timings` times every stage four ways (each branch's interpreter on the calling
thread, each branch alone on its core, the branches in parallel, and an empty hand-off),
so the fork/join overhead of a stage is its time inside whole runs less its slowest branch
on the calling thread: the hand-off to the workers, the wait for them, the concat, and the
cost of switching interpreters. `fit_fork_join` fits the cost model's fork/join term
(`s + e * elements`, per branched stage, paid on the merge side) to those overheads,
and `with_fork_join` puts it into a host cost table.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
import time

import numpy as np

from branching import costmodel
from branching.export import Segment
from common.timing import median_ms


def _pin(core: int | None) -> None:
  if core is not None and hasattr(os, "sched_setaffinity"):
    os.sched_setaffinity(0, {core})


class _Worker:
  """A thread pinned to `core` that runs submitted calls in order."""

  def __init__(self, core: int | None):
    self.inbox: queue.SimpleQueue = queue.SimpleQueue()
    self.outbox: queue.SimpleQueue = queue.SimpleQueue()
    self.thread = threading.Thread(target=self._loop, args=(core,), daemon=True)
    self.thread.start()

  def _loop(self, core) -> None:
    _pin(core)
    while True:
      job = self.inbox.get()
      if job is None:
        return
      fn, arg = job
      self.outbox.put(fn(arg))

  def submit(self, fn, arg) -> None:
    self.inbox.put((fn, arg))

  def result(self):
    return self.outbox.get()

  def close(self) -> None:
    self.inbox.put(None)
    self.thread.join()


def default_cores(n: int) -> tuple[int | None, ...]:
  """The first n cores this process may run on (None entries, unpinned, where there are fewer or no affinity)."""
  if not hasattr(os, "sched_getaffinity"):
    return (None,) * n
  cores = sorted(os.sched_getaffinity(0))
  return tuple(cores[:n]) if len(cores) >= n else (None,) * n


def _interp(tfl: bytes):
  from ai_edge_litert.interpreter import Interpreter

  it = Interpreter(model_content=tfl, num_threads=1)
  it.allocate_tensors()
  i, o = it.get_input_details()[0]["index"], it.get_output_details()[0]["index"]

  def run(x):
    it.set_tensor(i, x)
    it.invoke()
    return it.get_tensor(o)

  return run


class PinnedRunner:
  """Runs segments with branch j of every stage on core `cores[j]` (the caller's thread for j = 0).

  cores: one core per branch; None entries leave a thread unpinned.
  """

  def __init__(self, segments: list[Segment], cores: tuple[int | None, ...] = (0, 1)):
    self.cores = tuple(cores)
    self.stages = [[_interp(t) for t in seg.branches] for seg in segments]
    n = max(len(s) for s in self.stages)
    if n > len(self.cores):
      raise ValueError(f"{n} branches in a stage but only {len(self.cores)} cores given")
    self.workers = [_Worker(c) for c in self.cores[1:n]]

  def run_stage(self, k: int, x: np.ndarray) -> np.ndarray:
    runs = self.stages[k]
    if len(runs) == 1:
      return runs[0](x)
    for w, r in zip(self.workers, runs[1:], strict=False):
      w.submit(r, x)
    outs = [runs[0](x)] + [w.result() for w in self.workers[: len(runs) - 1]]
    return np.concatenate(outs, axis=-1)

  @contextlib.contextmanager
  def pinned(self):
    """Pins the calling thread to `cores[0]` for the block (restoring its affinity after), as an app
    pins its threads once; `run` inside it pays no affinity change per image."""
    before = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    _pin(self.cores[0])
    try:
      yield self
    finally:
      if before is not None:
        os.sched_setaffinity(0, before)

  def run(self, x: np.ndarray) -> np.ndarray:
    """The whole model on the calling thread as it is pinned (see `pinned`)."""
    x = np.ascontiguousarray(x, np.float32)
    for k in range(len(self.stages)):
      x = self.run_stage(k, x)
    return x

  def __call__(self, x: np.ndarray) -> np.ndarray:
    with self.pinned():
      return self.run(x)

  def close(self) -> None:
    for w in self.workers:
      w.close()


def in_run_ms(runner: PinnedRunner, x: np.ndarray, repeats: int, warmup: int = 3) -> list[float]:
  """Median ms of each stage inside whole runs of the model (caches and threads as a whole run leaves
  them: a stage repeated alone runs 10-50% faster on this CPU). Call inside `runner.pinned()`."""
  h0 = np.ascontiguousarray(x, np.float32)
  ts = np.zeros((repeats, len(runner.stages)))
  for i in range(-warmup, repeats):
    h = h0
    for k in range(len(runner.stages)):
      t0 = time.perf_counter()
      h = runner.run_stage(k, h)
      if i >= 0:
        ts[i, k] = time.perf_counter() - t0
  return [float(v) for v in np.median(ts, axis=0) * 1e3]


def stage_timings(runner: PinnedRunner, x: np.ndarray, *, repeats: int = 10) -> list[dict]:
  """Per segment (ms, medians): the stage inside whole runs (`in_run_ms`), each branch's interpreter
  run on the calling thread (compute), each branch alone on its core (a worker's includes the hand-off
  to it), the parallel stage repeated alone, the empty hand-off, and fork_join_ms = in-run time -
  slowest compute: what running the branches on threads adds inside a run of the model."""
  rows = []
  with runner.pinned():
    in_run = in_run_ms(runner, x, repeats)
    h = np.ascontiguousarray(x, np.float32)
    for k, runs in enumerate(runner.stages):
      row: dict = {"segment": k, "branches": len(runs), "in_elems": int(h.size), "in_run_ms": in_run[k]}
      if len(runs) > 1:
        row["branch_compute_ms"] = [median_ms(lambda r=r: r(h), repeats=repeats, warmup=3) for r in runs]
        alone = [row["branch_compute_ms"][0]]
        for w, r in zip(runner.workers, runs[1:], strict=False):

          def on_worker(w=w, r=r):
            w.submit(r, h)
            w.result()

          alone.append(median_ms(on_worker, repeats=repeats, warmup=3))

        def empty():
          for w in runner.workers[: len(runs) - 1]:
            w.submit(lambda a: a, h)
          for w in runner.workers[: len(runs) - 1]:
            w.result()

        row["branch_alone_ms"] = alone
        row["parallel_ms"] = median_ms(lambda k=k: runner.run_stage(k, h), repeats=repeats, warmup=3)
        row["empty_handoff_ms"] = median_ms(empty, repeats=repeats, warmup=3)
        row["fork_join_ms"] = row["in_run_ms"] - max(row["branch_compute_ms"])
      else:
        row["sequential_ms"] = median_ms(lambda r=runs[0]: r(h), repeats=repeats, warmup=3)
      h = runner.run_stage(k, h)
      row["out_elems"] = int(h.size)
      rows.append(row)
  return rows


def fit_fork_join(rows: list[dict]) -> tuple[float, float]:
  """(s ms, e ms per element) of overhead = s + e * (stage input + output elements), non-negative LS."""
  from scipy.optimize import nnls

  pts = [(r["in_elems"] + r["out_elems"], r["fork_join_ms"]) for r in rows if r["branches"] > 1]
  if not pts:
    return 0.0, 0.0
  a = np.asarray([[1.0, e] for e, _ in pts])
  y = np.maximum(np.asarray([t for _, t in pts]), 0.0)
  (s, e), _ = nnls(a, y)
  return float(s), float(e)


def with_fork_join(table: costmodel.CostTable, device: str, s: float, e: float) -> costmodel.CostTable:
  """`table` with `device`'s fork/join coefficients (n_xfer, xfer_elems) set to (s, e)."""
  coef = dict(table.coef)
  v = list(coef[device])
  v[costmodel.FEATURES.index("n_xfer")] = s
  v[costmodel.FEATURES.index("xfer_elems")] = e
  coef[device] = tuple(v)
  return costmodel.CostTable(coef)
