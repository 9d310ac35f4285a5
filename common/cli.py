"""Command-line helpers shared by every `main.py` and launcher."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

import ml_collections

from common.errors import EdgeInferError


class ArgumentParser(argparse.ArgumentParser):
  """argparse with the project's errors: one line naming the argument, exit status 2, no usage dump."""

  def error(self, message: str):
    print(f"error: {self.prog}: {message} (see --help)", file=sys.stderr)
    sys.exit(2)


def debug() -> bool:
  """Whether errors show their traceback (`--debug`, or EDGEINFER_DEBUG=1 in the environment)."""
  return os.environ.get("EDGEINFER_DEBUG", "") not in ("", "0")


def run_main(fn: Callable[[], int | None]) -> None:
  """Runs `fn`; a user error prints its message and exits 2, with no traceback (unless `debug()`).

  In a multi-host run, a collective that fails because another process is gone
  prints which process saw it and exits 2 at once (skipping the distributed
  shutdown barrier, which would wait for the dead process and then abort).
  """
  try:
    code = fn()
  except EdgeInferError as e:
    if debug():
      raise
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  except Exception as e:
    from common.sharding import peer_failure_message

    message = peer_failure_message(e) if "jax" in sys.modules else None
    if message is None:
      raise
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(2)
  except KeyboardInterrupt:
    print("interrupted; rerun the same command to resume from the last checkpoint", file=sys.stderr)
    sys.exit(130)
  sys.exit(code or 0)


def save_config(config: ml_collections.ConfigDict, workdir: str | Path) -> Path:
  """Writes the run's config to workdir/config.json."""
  from common.export import write_atomic

  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  return write_atomic(workdir / "config.json", json.dumps(config.to_dict(), indent=2, default=str).encode())
