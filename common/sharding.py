"""Data parallelism with `jax.sharding`, and multi-host start-up.

A 1-D mesh over all devices, axis "data": the batch is sharded along its first
dimension, parameters and optimiser state are replicated. Jitting a train step
with these shardings makes XLA insert the gradient all-reduce; the result
equals the single-device step up to float reassociation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from common.errors import ConfigError

DATA_AXIS = "data"


def initialize_multihost(
  coordinator_address: str | None = None, num_processes: int | None = None, process_id: int | None = None
) -> None:
  """Starts JAX's distributed runtime (call before any other JAX call on every host).

  With no arguments, JAX reads the cluster from the environment (TPU pods, SLURM,
  or JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID).
  """
  jax.distributed.initialize(
    coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id
  )


def make_mesh(devices: list | None = None) -> Mesh:
  """A 1-D data-parallel mesh over `devices` (default: all devices of all hosts)."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Places every leaf of `tree` on all devices of the mesh."""
  return jax.device_put(tree, replicated(mesh))


def shard_batch(batch: Any, mesh: Mesh) -> Any:
  """Splits every leaf of `batch` along axis 0 over the mesh.

  Raises:
    ConfigError: the batch size is not a multiple of the device count.
  """
  n = mesh.devices.size

  def put(x):
    x = np.asarray(x)
    if x.shape[0] % n:
      raise ConfigError(
        f"batch size {x.shape[0]} is not a multiple of the {n} devices; "
        f"set the batch size to a multiple of {n}"
      )
    return jax.device_put(x, batch_sharded(mesh))

  return jax.tree.map(put, batch)


def data_parallel(step_fn: Callable, mesh: Mesh, *, donate_state: bool = True) -> Callable:
  """Jits `step_fn(state, batch, rng) -> (state, metrics)` for data parallelism.

  The state and rng are replicated, the batch sharded on axis 0; the outputs are
  replicated. Feed batches through `shard_batch` and the state through `replicate`.
  """
  rep, shard = replicated(mesh), batch_sharded(mesh)
  return jax.jit(
    step_fn,
    in_shardings=(rep, shard, rep),
    out_shardings=(rep, rep),
    donate_argnums=(0,) if donate_state else (),
  )
