"""Orbax checkpoints: a manager that resumes from the workdir, and one-off pytree files.

Orbax writes each checkpoint to a temporary directory and renames it when it is
complete, so a run killed while saving leaves the previous checkpoint intact.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from common.errors import CheckpointError


def make_manager(directory: str | os.PathLike, *, max_to_keep: int = 3) -> ocp.CheckpointManager:
  """A `CheckpointManager` over `directory` that keeps the newest `max_to_keep`."""
  directory = Path(directory).absolute()
  directory.mkdir(parents=True, exist_ok=True)
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
  return ocp.CheckpointManager(directory, options=options)


def _abstract(tree: Any) -> Any:
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def restore_latest(manager: ocp.CheckpointManager, like: Any) -> tuple[Any, int | None]:
  """Restores the newest checkpoint into the structure of `like`.

  Returns:
    (tree, step), or (like, None) when there is no checkpoint yet.

  Raises:
    CheckpointError: the checkpoint is unreadable or does not match `like`.
  """
  step = manager.latest_step()
  if step is None:
    return like, None
  try:
    tree = manager.restore(step, args=ocp.args.StandardRestore(_abstract(like)))
  except Exception as e:  # noqa: BLE001 - orbax raises many types
    raise CheckpointError(
      f"cannot restore checkpoint step {step} in {manager.directory}: {e}. "
      "If the model or config changed, use a fresh --workdir or delete the checkpoints."
    ) from None
  return tree, int(step)


def restore_finished(directory: str | os.PathLike, like: Any, *, run_first: str, max_to_keep: int = 3) -> Any:
  """The newest checkpoint in `directory` (a finished training's), or CheckpointError.

  `run_first` is the command that makes it, named in the error, e.g. `edgeinfer coinfer init`.
  """
  directory = Path(directory)
  if not directory.exists():
    raise CheckpointError(f"no checkpoints in {directory}; run `{run_first}` first")
  manager = make_manager(directory, max_to_keep=max_to_keep)
  try:
    tree, step = restore_latest(manager, like)
  finally:
    manager.close()
  if step is None:
    raise CheckpointError(f"no checkpoint in {directory}; run `{run_first}` first")
  return tree


def save(manager: ocp.CheckpointManager, step: int, tree: Any, *, wait: bool = True) -> None:
  """Saves `tree` at `step` (atomically: temporary name, then rename)."""
  manager.save(int(step), args=ocp.args.StandardSave(tree), force=True)
  if wait:
    manager.wait_until_finished()


def save_pytree(path: str | os.PathLike, tree: Any) -> None:
  """Saves one pytree (e.g. a frozen reference network) to `path`, replacing it."""
  path = Path(path).absolute()
  ckptr = ocp.StandardCheckpointer()
  ckptr.save(path, tree, force=True)
  ckptr.wait_until_finished()


def load_pytree(path: str | os.PathLike, like: Any | None = None) -> Any:
  """Loads a pytree saved by `save_pytree`; `like` gives the structure and dtypes."""
  path = Path(path).absolute()
  if not path.exists():
    raise CheckpointError(f"no checkpoint at {path}; train or save it first")
  ckptr = ocp.StandardCheckpointer()
  try:
    if like is None:
      return ckptr.restore(path)
    return ckptr.restore(path, _abstract(like))
  except Exception as e:  # noqa: BLE001
    raise CheckpointError(f"cannot read checkpoint {path}: {e}") from None
