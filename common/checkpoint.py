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
  try:  # orbax reads every step's _CHECKPOINT_METADATA here; a damaged one raises a bare ValueError
    return ocp.CheckpointManager(directory, options=options)
  except Exception as e:  # noqa: BLE001 - orbax raises many types
    bad = [p.name for p in sorted(directory.iterdir()) if not _metadata_ok(p / "_CHECKPOINT_METADATA")]
    which = f"the damaged step folder {directory / bad[0]}" if bad else "the damaged step folder"
    raise CheckpointError(
      f"the checkpoints in {directory} cannot be listed ({_short(e)}); delete {which} and rerun the step "
      "that makes them (it resumes from the checkpoint before)"
    ) from None


def _metadata_ok(path: Path) -> bool:
  """Whether a step's `_CHECKPOINT_METADATA` (if any) is a JSON object, as orbax needs to list it."""
  import json

  if not path.is_file():
    return True
  try:
    return isinstance(json.loads(path.read_bytes()), dict)
  except ValueError:
    return True  # orbax logs undecodable metadata and goes on; only a JSON non-object stops it


def _short(e: Exception) -> str:
  from common.safeio import quote

  return quote(f"{type(e).__name__}: {e}", 160)


def _abstract(tree: Any) -> Any:
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def restore_latest(manager: ocp.CheckpointManager, like: Any, *, rerun: str = "") -> tuple[Any, int | None]:
  """Restores the newest checkpoint into the structure of `like`.

  Returns:
    (tree, step), or (like, None) when there is no checkpoint yet.

  Raises:
    CheckpointError: the checkpoint is unreadable or does not match `like`; the message names its
      folder and what to do (delete it and rerun `rerun`, which resumes from the one before).
  """
  step = manager.latest_step()
  if step is None:
    return like, None
  try:
    tree = manager.restore(step, args=ocp.args.StandardRestore(_abstract(like)))
  except Exception as e:  # noqa: BLE001 - orbax raises many types
    folder = Path(manager.directory) / str(step)
    again = f" and rerun `{rerun}` (it resumes from the checkpoint before)" if rerun else ""
    raise CheckpointError(
      f"checkpoint {folder} cannot be restored ({_short(e)}); if it is damaged, delete "
      f"{folder}{again}; if the model or config changed, use a fresh --workdir"
    ) from None
  return tree, int(step)


def restore_finished(directory: str | os.PathLike, like: Any, *, run_first: str, max_to_keep: int = 3) -> Any:
  """The newest checkpoint in `directory` (a finished training's), or CheckpointError.

  `run_first` is the command that makes it, named in the error, e.g. `edgeinfer coinfer init`. A
  step that skips because a finished training's checkpoint exists calls this first: what a step
  skips to must be readable, or the run stops naming the damaged folder and the step to rerun.
  """
  directory = Path(directory)
  if not directory.exists():
    raise CheckpointError(f"no checkpoints in {directory}; run `{run_first}` first")
  manager = make_manager(directory, max_to_keep=max_to_keep)
  try:
    tree, step = restore_latest(manager, like, rerun=run_first)
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


def load_pytree(path: str | os.PathLike, like: Any | None = None, *, rerun: str = "") -> Any:
  """Loads a pytree saved by `save_pytree`; `like` gives the structure and dtypes.

  A damaged one is a CheckpointError naming it and, given `rerun` (the command that makes it, e.g.
  `edgeinfer subnets finetune`), what to do: a step skipped because this output existed is redone.
  """
  path = Path(path).absolute()
  if not path.exists():
    raise CheckpointError(
      f"no checkpoint at {path}; {f'run `{rerun}`' if rerun else 'train or save it'} first"
    )
  ckptr = ocp.StandardCheckpointer()
  try:
    if like is None:
      return ckptr.restore(path)
    return ckptr.restore(path, _abstract(like))
  except Exception as e:  # noqa: BLE001
    todo = f"; delete it and rerun `{rerun}` to remake it" if rerun else ""
    raise CheckpointError(f"cannot read checkpoint {path} ({_short(e)}){todo}") from None
