"""Data parallelism with `jax.sharding` over every device of every host, and multi-host start-up.

A 1-D mesh over all devices, axis "data": the batch is sharded along its first
dimension, parameters and optimiser state are replicated (the models of this
project are small enough for every device to hold a copy, and replication keeps
the checkpoints independent of the device count). `jit_step` jits a train step
with these in/out shardings, so XLA inserts the gradient all-reduce; the result
equals the single-device step up to float reassociation. With one device it is
plain `jax.jit`.

Several hosts: `initialize_multihost` starts JAX's distributed runtime; each
process then feeds only its rows of every global batch (`process_rows`) and
`jit_step` assembles the global array with `jax.make_array_from_process_local_data`.
Only the primary process (index 0) writes files (`is_primary`).
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from common.errors import ConfigError

DATA_AXIS = "data"
HEARTBEAT_TIMEOUT_S = 20


def initialize_multihost(
  coordinator_address: str | None = None, num_processes: int | None = None, process_id: int | None = None
) -> None:
  """Starts JAX's distributed runtime (call before any other JAX call on every host).

  With no arguments, JAX reads the cluster from the environment (TPU pods, SLURM,
  or JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID). On CPU the
  cross-process collectives are gloo's (TCP). A process that stops sending
  heartbeats for `HEARTBEAT_TIMEOUT_S` seconds fails the whole run.
  """
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  try:
    jax.distributed.initialize(
      coordinator_address=coordinator_address,
      num_processes=num_processes,
      process_id=process_id,
      heartbeat_timeout_seconds=HEARTBEAT_TIMEOUT_S,
      initialization_timeout=120,
    )
  except (RuntimeError, ValueError) as e:
    raise ConfigError(
      f"cannot start the multi-host run (coordinator {coordinator_address}, {num_processes} processes, "
      f"this one {process_id}): {str(e).splitlines()[0]}. Start every process with the same "
      "--coordinator and --num_processes and a distinct --process_id in [0, num_processes)"
    ) from None


def is_primary() -> bool:
  """True on the process that writes reports, plots, metrics and exports (process 0).

  Without `initialize_multihost` every process is primary (and no JAX backend is started here).
  """
  return not jax.distributed.is_initialized() or jax.process_index() == 0


def peer_failure_message(e: BaseException) -> str | None:
  """A one-line explanation when `e` means another process of the run is gone, else None."""
  text = str(e)
  marks = ("Gloo", "heartbeat", "coordination service", "Connection reset", "UNAVAILABLE", "DEADLINE")
  if not jax.distributed.is_initialized() or not any(m in text for m in marks):
    return None
  first = next((ln for ln in text.splitlines() if ln.strip()), text)[:300]
  return (
    f"process {jax.process_index()} of {jax.process_count()}: another process of this multi-host run "
    f"stopped or is unreachable ({first}). Restart every process with the same command to resume "
    "from the last checkpoint"
  )


def make_mesh(devices: Sequence | None = None) -> Mesh:
  """A 1-D data-parallel mesh over `devices` (default: all devices of all hosts)."""
  if devices is None:  # each process's devices contiguous: its rows of a batch are one block
    devices = sorted(jax.devices(), key=lambda d: d.process_index)
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def check_batch(batch_size: int, what: str = "batch size") -> None:
  """ConfigError unless a global batch of `batch_size` divides over all devices."""
  n = jax.device_count()
  if batch_size % n:
    raise ConfigError(
      f"{what} {batch_size} does not divide over the {n} devices ({jax.process_count()} process(es)); "
      f"set it to a multiple of {n}"
    )


def process_rows() -> tuple[int, int] | None:
  """(process index, process count) when several processes share each batch, else None."""
  return (jax.process_index(), jax.process_count()) if jax.process_count() > 1 else None


def _place(x: Any, sharding: NamedSharding) -> jax.Array:
  if isinstance(x, jax.Array) and x.sharding.is_equivalent_to(sharding, x.ndim):
    return x
  if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    # device_put does not take typed keys to other processes' devices; their raw data it does
    data = jax.device_put(jax.random.key_data(x), sharding)
    return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
  return jax.device_put(x, sharding)


def replicate(tree: Any, mesh: Mesh | None = None) -> Any:
  """Places every leaf of `tree` on all devices of the mesh (a no-op on one device)."""
  if mesh is None:
    if jax.device_count() == 1:
      return tree
    mesh = make_mesh()
  rep = replicated(mesh)
  return jax.tree.map(lambda x: _place(x, rep), tree)


def spans_devices(tree: Any) -> bool:
  """True when some leaf of `tree` lives on more than one device (a data-parallel state)."""
  return any(isinstance(x, jax.Array) and len(x.sharding.device_set) > 1 for x in jax.tree.leaves(tree))


def to_local(tree: Any) -> Any:
  """A copy of a replicated `tree` on this process's first device (for work after training)."""
  device = jax.local_devices()[0]
  return jax.tree.map(
    lambda x: jax.device_put(np.asarray(x), device) if isinstance(x, jax.Array) else x, tree
  )


def shard_batch(batch: Any, mesh: Mesh, *, local: bool = True) -> Any:
  """Splits every leaf of `batch` along axis 0 over the mesh.

  With several processes and `local`, each leaf holds only this process's rows
  (`process_rows`) and the global array is assembled from every process's part;
  otherwise every process passes the whole array.

  Raises:
    ConfigError: the global batch does not divide over the devices.
  """
  shard = batch_sharded(mesh)
  n, procs = mesh.devices.size, jax.process_count()
  scale = procs if local else 1

  def put(x):
    if isinstance(x, jax.Array) and x.sharding.is_equivalent_to(shard, x.ndim):
      return x
    if not isinstance(x, jax.Array):
      x = np.asarray(x)
    if x.ndim == 0 or (x.shape[0] * scale) % n:
      size = "a scalar" if x.ndim == 0 else x.shape[0] * scale
      raise ConfigError(
        f"batch size {size} does not divide over the {n} devices; set the batch size to a multiple of {n}"
      )
    if local and procs > 1:
      return jax.make_array_from_process_local_data(shard, np.asarray(x), (x.shape[0] * procs, *x.shape[1:]))
    return jax.device_put(x, shard)

  return jax.tree.map(put, batch)


class Step:
  """A train step jitted for one device, or for data parallelism over all devices.

  Decided at the first call (so it can be built at import time, before
  `jax.distributed.initialize`). Arguments in `batch_argnums` are sharded on
  axis 0 (host data is this process's rows when `local_batches`), every other
  argument is replicated; outputs in `batch_outnums` stay sharded, the rest are
  replicated. Attributes (`lower`, `_cache_size`, ...) are those of the jitted function.
  """

  def __init__(
    self,
    fn: Callable,
    *,
    batch_argnums: Sequence[int],
    donate_argnums: Sequence[int],
    batch_outnums: Sequence[int],
    num_outputs: int,
    local_batches: bool,
    submesh: bool,
  ):
    functools.update_wrapper(self, fn)
    self.fn, self.batch_argnums, self.donate_argnums = fn, tuple(batch_argnums), tuple(donate_argnums)
    self.batch_outnums, self.num_outputs = tuple(batch_outnums), num_outputs
    self.local_batches, self.submesh = local_batches, submesh
    self._plain: Callable | None = None
    self._by_arity: dict[int, Callable] = {}
    self._last: Callable | None = None
    self._placed: dict[int, tuple[Any, jax.Array]] = {}
    self.mesh: Mesh | None = None

  def _single_device(self) -> Callable | None:
    """The plain `jax.jit` of the step when it runs on one device (made once), else None."""
    if self._plain is None and self.mesh is None and jax.device_count() == 1:
      self._plain = jax.jit(self.fn, donate_argnums=self.donate_argnums)
    return self._plain

  def __call__(self, *args, **kwargs):
    if self._single_device() is not None:
      return self._plain(*args, **kwargs)
    if kwargs:
      args = inspect.signature(self.fn).bind(*args, **kwargs).args
    if self.mesh is None:
      self.mesh = self._make_mesh(args)
    rep, shard = replicated(self.mesh), batch_sharded(self.mesh)
    placed = tuple(
      shard_batch(a, self.mesh, local=self.local_batches)
      if i in self.batch_argnums
      else replicate(a, self.mesh)
      if i in self.donate_argnums
      else self._replicate(a, rep)
      for i, a in enumerate(args)
    )
    jitted = self._by_arity.get(len(args))
    if jitted is None:
      outs = rep
      if self.batch_outnums:
        outs = tuple(shard if i in self.batch_outnums else rep for i in range(self.num_outputs))
      jitted = jax.jit(
        self.fn,
        in_shardings=tuple(shard if i in self.batch_argnums else rep for i in range(len(args))),
        out_shardings=outs,
        donate_argnums=self.donate_argnums,
      )
      self._by_arity[len(args)] = jitted
    self._last = jitted
    return jitted(*placed)

  def _replicate(self, tree: Any, rep: NamedSharding) -> Any:
    """Replicates host values, remembering each: an argument passed unchanged to every step
    (agile's frozen evaluator, its hyperparameters) is copied to the devices once."""

    def put(x):
      if isinstance(x, jax.Array) and x.sharding.is_equivalent_to(rep, x.ndim):
        return x
      hit = self._placed.get(id(x))
      if hit is not None and hit[0] is x:
        return hit[1]
      if len(self._placed) > 4096:
        self._placed.clear()
      self._placed[id(x)] = (x, _place(x, rep))
      return self._placed[id(x)][1]

    return jax.tree.map(put, tree)

  def _make_mesh(self, args) -> Mesh:
    devices = sorted(jax.devices(), key=lambda d: d.process_index)
    if self.submesh and jax.process_count() == 1:
      rows = jax.tree.leaves(args[self.batch_argnums[0]])[0].shape[0]
      devices = devices[: math.gcd(rows, len(devices))]
    return make_mesh(devices)

  def lower(self, *args, **kwargs):
    """`jax.jit(...).lower` of the step; on one device without a call first (the benchmarks
    compile a step with their own XLA options)."""
    target = self._single_device() or self._last
    if target is None:
      raise AttributeError("lower: call the step once first")
    return target.lower(*args, **kwargs)

  def __getattr__(self, name):
    if name.startswith("__"):
      raise AttributeError(name)
    target = self._plain or self._last
    if target is None:
      raise AttributeError(f"{name}: call the step once first")
    return getattr(target, name)


def jit_step(
  fn: Callable | None = None,
  *,
  batch_argnums: Sequence[int] = (1,),
  donate_argnums: Sequence[int] = (0,),
  batch_outnums: Sequence[int] = (),
  num_outputs: int = 2,
  local_batches: bool = True,
  submesh: bool = False,
) -> Step | Callable[[Callable], Step]:
  """Jits `fn(state, batch, ...)` data parallel over all devices (plain `jax.jit` on one).

  Use as `@sharding.jit_step` in place of `@functools.partial(jax.jit, donate_argnums=0)`.

  Args:
    fn: the step; by default argument 1 is the batch and argument 0 (the state) is donated.
    batch_argnums: arguments sharded on axis 0; the others are replicated.
    donate_argnums: arguments whose buffers the step reuses.
    batch_outnums: outputs left sharded on axis 0 (of `num_outputs`); the others are replicated.
    local_batches: with several processes, host data in the batch arguments is this
      process's rows only; False: every process passes the whole array.
    submesh: on one host, shard over the largest number of devices that divides the
      leading axis (e.g. offload's settings x seeds rows) instead of failing.
  """
  kw = dict(
    batch_argnums=batch_argnums,
    donate_argnums=donate_argnums,
    batch_outnums=batch_outnums,
    num_outputs=num_outputs,
    local_batches=local_batches,
    submesh=submesh,
  )
  if fn is None:
    return lambda f: Step(f, **kw)
  return Step(fn, **kw)
