"""Which config made a step's output: a stamp beside each output, checked before reuse.

A step that skips because its output exists must know the output was made from the same
config. `record(out, config, keys)` writes `out`'s stamp (`<name>.config.json` beside it: the
config sections the output depends on); `check(workdir, config, deps)` runs before anything is
written and raises `ConfigError` naming the output and every key that changed:

  DEPS = {"knapsack.json": ("seed", "data", "model", "knapsack"), ...}
  provenance.check(workdir, config, DEPS)          # at the entry point, before config.json
  ...                                                # the step writes knapsack.json, then
  provenance.record(workdir / "knapsack.json", config, DEPS["knapsack.json"])
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from common import config as config_lib
from common.errors import ConfigError, DataError
from common.safeio import load_json, quote


def stamp_path(out: str | os.PathLike) -> Path:
  out = Path(out)
  return out.with_name(out.name + ".config.json")


def _plain(value: Any) -> Any:
  if hasattr(value, "to_dict"):
    value = value.to_dict()
  return json.loads(json.dumps(value, sort_keys=True, default=str))  # tuples -> lists, numbers canonical


def sections(config: Mapping[str, Any], keys: Iterable[str]) -> dict[str, Any]:
  """The named sections (or keys) of `config`, as plain JSON values.

  A key may be dotted (`metrics.classifiers`: that subsection alone) or start with `-`: a key left
  out of the sections named before it because the output does not depend on it
  (`("dqn", "-dqn.iterations")`: a checkpoint of the first iterations serves a longer run).
  """
  out: dict[str, Any] = {}
  for key in keys:
    if key.startswith("-"):
      dotted = key[1:]
      top = max((k for k in out if dotted.startswith(k + ".")), key=len, default=None)
      if top is None:
        continue
      *parents, leaf = dotted[len(top) + 1 :].split(".")
      node = out[top]
      for part in parents:
        node = node.get(part) if isinstance(node, dict) else None
      if isinstance(node, dict):
        node.pop(leaf, None)
      continue
    try:
      out[key] = _plain(config_lib.get(config, key))
    except ConfigError:
      out[key] = None  # a section this config does not have
  return out


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
  if isinstance(obj, dict):
    out: dict[str, Any] = {}
    for k, v in obj.items():
      out.update(_flatten(v, f"{prefix}{k}."))
    return out or {prefix.rstrip("."): {}}
  return {prefix.rstrip("."): obj}


def changed_keys(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
  """(dotted key, old value, new value) for every leaf that differs."""
  a, b = _flatten(dict(old)), _flatten(dict(new))
  return [(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def record(out: str | os.PathLike, config: Mapping[str, Any], keys: Sequence[str]) -> Path:
  """Writes `out`'s stamp: the config sections it was made from."""
  from common.export import write_atomic

  data = json.dumps(sections(config, keys), indent=2, sort_keys=True).encode()
  return write_atomic(stamp_path(out), data)


def record_all(
  workdir: str | os.PathLike, config: Mapping[str, Any], deps: Mapping[str, Sequence[str]], *names: str
) -> None:
  """Stamps the outputs `names` of `deps` before a step starts making them (a stamp without its
  output is ignored by `check`, an output without its stamp is refused)."""
  for name in names:
    record(Path(workdir) / name, config, deps[name])


def check(workdir: str | os.PathLike, config: Mapping[str, Any], deps: Mapping[str, Sequence[str]]) -> None:
  """Refuses (ConfigError) when an existing output of `deps` was made from other config values.

  An output without a stamp cannot be trusted either (it was made by an older version, or copied
  in by hand), and is refused the same way.
  """
  workdir = Path(workdir)
  for name, keys in deps.items():
    out = workdir / name
    if not out.exists():
      continue
    stamp = stamp_path(out)
    if not stamp.exists():
      raise ConfigError(
        f"{out} exists but records no config ({stamp.name} is missing), so it may be stale; "
        f"delete it (and the outputs made from it) to recompute, or use a new --workdir"
      )
    try:
      old = load_json(stamp, what="config stamp")
    except DataError as e:
      raise ConfigError(f"{e}; delete {out} and its stamp to recompute") from None
    diff = changed_keys(old, sections(config, keys))
    if diff:
      shown = "; ".join(f"config.{k} was {quote(a, 60)}, now {quote(b, 60)}" for k, a, b in diff[:4])
      more = f" (and {len(diff) - 4} more)" if len(diff) > 4 else ""
      raise ConfigError(
        f"{out} was made from a different config: {shown}{more}. Use a new --workdir, or delete "
        f"{name} (and the outputs made from it) to recompute it with this config"
      )
