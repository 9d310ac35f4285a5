"""Readers of user files and workdir files that check what they read and name the file.

Every reader here raises `DataError` (or `ConfigError` for config files) with the file's path
and what is wrong, never a bare `UnicodeDecodeError`, `RecursionError` or `ValueError`:

  read_text(path, what="trace")                      # a UTF-8 text file, size-bounded
  load_yaml(path, what="network config")             # YAML, bounded in size, depth and aliases
  load_json(path, what="knapsack result", kind=dict)
  load_array(path, what="per-image results", shape=(None, 360), dtype="bool")
  quote(value)                                       # a repr short enough for an error message

Sizes are bounded so that a wrong file (a video passed as a trace, a "billion laughs" YAML)
fails in milliseconds with a message instead of hanging or exhausting memory.
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from common.errors import DataError

MAX_TEXT_BYTES = 64 << 20
MAX_YAML_BYTES = 1 << 20
MAX_YAML_DEPTH = 64
MAX_YAML_NODES = 200_000


def quote(value: Any, limit: int = 120) -> str:
  """`repr(value)`, cut to `limit` characters (an error message never quotes megabytes)."""
  try:
    text = repr(value)
  except RecursionError:
    text = f"<{type(value).__name__} nested too deep>"
  if len(text) <= limit:
    return text
  tail = f"... ({len(text)} chars)"
  return text[: max(limit - len(tail), 0)] + tail


def _regular_file(path: str | os.PathLike, what: str, max_bytes: int, error: type[Exception]) -> Path:
  path = Path(path)
  if not path.exists():
    raise error(f"{what} {path} does not exist")
  if not path.is_file():
    raise error(f"{what} {path} is not a regular file (a directory?)")
  size = path.stat().st_size
  if size > max_bytes:
    raise error(f"{what} {path} is {size} bytes, more than the {max_bytes} a {what} may have")
  return path


def read_text(
  path: str | os.PathLike,
  *,
  what: str = "file",
  max_bytes: int = MAX_TEXT_BYTES,
  error: type[Exception] = DataError,
) -> str:
  """The UTF-8 text of a regular file; binary content (NUL bytes, invalid UTF-8) is an error."""
  path = _regular_file(path, what, max_bytes, error)
  data = path.read_bytes()
  if b"\x00" in data:
    raise error(f"{what} {path} holds binary data (NUL bytes), not text")
  try:
    return data.decode("utf-8")
  except UnicodeDecodeError as e:
    raise error(
      f"{what} {path} is not UTF-8 text (byte {e.start}: {data[e.start : e.start + 1]!r})"
    ) from None


def parse_decimal_int(text: str) -> int | None:
  """An ASCII decimal integer (optionally signed), or None; Unicode digits such as '²' that pass
  `str.isdigit()` are not integers."""
  s = text.strip()
  body = s[1:] if s[:1] in "+-" else s
  if not body or not body.isascii() or not body.isdigit():
    return None
  return int(s)


def load_yaml(
  path: str | os.PathLike,
  *,
  what: str = "YAML file",
  max_bytes: int = MAX_YAML_BYTES,
  max_depth: int = MAX_YAML_DEPTH,
  max_nodes: int = MAX_YAML_NODES,
  error: type[Exception] = DataError,
) -> Any:
  """Parses a YAML file with the safe loader, refusing documents deeper than `max_depth` or that
  expand (aliases counted at every use) to more than `max_nodes` nodes."""
  import yaml

  text = read_text(path, what=what, max_bytes=max_bytes, error=error)
  try:
    root = yaml.compose(text, Loader=yaml.SafeLoader)
  except yaml.YAMLError as e:
    raise error(f"{what} {path}: not valid YAML: {quote(str(e), 300)}") from None
  except RecursionError:
    raise error(f"{what} {path}: nested deeper than {max_depth} levels") from None
  if root is None:
    return None
  _check_expansion(root, path, what, max_depth, max_nodes, error)
  try:
    return yaml.SafeLoader(text).get_single_data()
  except (yaml.YAMLError, ValueError, TypeError) as e:
    raise error(f"{what} {path}: {quote(str(e), 300)}") from None


def _node_key(node: Any) -> str:
  value = getattr(node, "value", None)
  return value if isinstance(value, str) else "<key>"


def _children(node: Any) -> list:
  import yaml

  if isinstance(node, yaml.SequenceNode):
    return list(node.value)
  if isinstance(node, yaml.MappingNode):
    return [n for pair in node.value for n in pair]
  return []


def _shared_nodes(root: Any) -> set[int]:
  """The ids of the nodes used more than once (an anchor and its aliases)."""
  uses: dict[int, int] = {}
  stack = [root]
  while stack:
    node = stack.pop()
    uses[id(node)] = uses.get(id(node), 0) + 1
    if uses[id(node)] == 1:
      stack.extend(_children(node))
  return {i for i, n in uses.items() if n > 1}


def _check_expansion(root: Any, path: Path, what: str, max_depth: int, max_nodes: int, error: type) -> None:
  """Walks a composed YAML node graph as the constructor would expand it, counting every alias use.
  An error names the key that holds the offending value (`i` in `i: [*h, *h, ...]`): the path from
  the root down to the first node used more than once."""
  import yaml

  shared = _shared_nodes(root)
  count, stack = 0, [(root, 1, "", False)]
  while stack:
    node, depth, key, frozen = stack.pop()
    count += 1
    where = f" (under the key {quote(key or '<root>', 80)})"
    if depth > max_depth:
      raise error(f"{what} {path}: nested deeper than {max_depth} levels{where}")
    if count > max_nodes:
      raise error(
        f"{what} {path}: expands to more than {max_nodes} nodes{where}; use fewer nested aliases there"
      )
    if isinstance(node, yaml.SequenceNode):
      for i, child in enumerate(node.value):
        alias = frozen or id(child) in shared
        stack.append((child, depth + 1, key if alias else f"{key}[{i}]", alias))
    elif isinstance(node, yaml.MappingNode):
      for k, v in node.value:
        sub = key if frozen else (f"{key}.{_node_key(k)}" if key else _node_key(k))
        stack.append((k, depth + 1, sub, frozen or id(k) in shared))
        stack.append((v, depth + 1, sub, frozen or id(v) in shared))


def load_json(
  path: str | os.PathLike,
  *,
  what: str = "JSON file",
  kind: type | None = dict,
  keys: Sequence[str] = (),
  max_bytes: int = MAX_TEXT_BYTES,
) -> Any:
  """Parses a JSON file, checking its top-level type and required keys."""
  text = read_text(path, what=what, max_bytes=max_bytes)
  try:
    obj = json.loads(text)
  except (ValueError, RecursionError) as e:
    raise DataError(
      f"{what} {path} is not valid JSON ({quote(str(e), 200)}); delete it to recompute"
    ) from None
  if kind is not None and not isinstance(obj, kind):
    raise DataError(f"{what} {path} holds a JSON {type(obj).__name__}, expected a {kind.__name__}")
  missing = [k for k in keys if k not in obj]
  if missing:
    raise DataError(f"{what} {path} lacks the keys {missing}; delete it to recompute")
  return obj


def load_json_if_present(path: str | os.PathLike, *, what: str = "result file") -> dict | None:
  """A step's JSON result (a dict), or None when the step has not run."""
  return load_json(path, what=what) if Path(path).exists() else None


def load_array(
  path: str | os.PathLike,
  *,
  what: str = "array file",
  shape: Sequence[int | None] | None = None,
  dtype: str | None = None,
  finite: bool = True,
) -> np.ndarray:
  """Loads one `.npy` array (no pickles), checking shape (None = any size on that axis), dtype
  kind and finiteness."""
  path = _regular_file(path, what, 1 << 34, DataError)
  try:
    arr = np.load(path, allow_pickle=False)
  except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
    raise DataError(
      f"{what} {path} is not a readable .npy array ({quote(str(e), 200)}); delete it to recompute"
    ) from None
  if not isinstance(arr, np.ndarray):
    raise DataError(f"{what} {path} holds several arrays; expected one .npy array")
  check_array(arr, path=path, what=what, shape=shape, dtype=dtype, finite=finite)
  return arr


def load_npz(
  path: str | os.PathLike, *, what: str = "array archive", hint: str = "delete it to recompute"
) -> dict[str, np.ndarray]:
  """All arrays of an `.npz` archive (no pickles), read eagerly; a damaged archive is named."""
  path = _regular_file(path, what, 1 << 34, DataError)
  try:
    z = np.load(path, allow_pickle=False)  # an .npy file (named .npz) loads as one array
    if not isinstance(z, np.lib.npyio.NpzFile):
      raise ValueError(f"it holds a single {type(z).__name__} (an .npy file?), not an .npz archive")
    with z:
      return {k: np.asarray(z[k]) for k in z.files}
  except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
    raise DataError(f"{what} {path} is not a readable .npz archive ({quote(str(e), 200)}); {hint}") from None


def check_array(
  arr: np.ndarray,
  *,
  path: str | os.PathLike,
  what: str,
  shape: Sequence[int | None] | None = None,
  dtype: str | None = None,
  finite: bool = True,
) -> np.ndarray:
  """Checks one loaded array's shape, dtype and finiteness; names `path` in the error."""
  if shape is not None and (
    arr.ndim != len(shape)
    or any(want is not None and have != want for have, want in zip(arr.shape, shape, strict=True))
  ):
    want = "(" + ", ".join("any" if s is None else str(s) for s in shape) + ")"
    raise DataError(f"{what} {path} has shape {arr.shape}, expected {want}; delete it to recompute")
  kinds = {"floating": np.floating, "integer": np.integer, "bool": np.bool_, "number": np.number}
  if dtype is not None and not np.issubdtype(arr.dtype, kinds.get(dtype) or np.dtype(dtype)):
    raise DataError(f"{what} {path} has dtype {arr.dtype}, expected {dtype}; delete it to recompute")
  if finite and np.issubdtype(arr.dtype, np.floating) and not np.all(np.isfinite(arr)):
    raise DataError(f"{what} {path} holds NaN or infinite values; delete it to recompute")
  return arr
