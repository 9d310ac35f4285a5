"""The typed schema of a network YAML (the pycls `ANYNET` and `MODEL` sections), in one place.

Every key a network file may hold is listed in `SCHEMA` with its shape, its element type and its
range; `check(doc, name)` checks a parsed document against it before `branching.network` reads a
single value, so a string where a width belongs, a float stride or a SE ratio of "half" is one
`ConfigError` naming the key (`R-50-CD: ANYNET.WIDTHS[1][0] = '64': must be an integer >= 1`).
What the schema cannot say key by key (list lengths that must agree, a group width that must
divide its bottleneck width) is checked by `branching.network.from_dict`.

Shapes: "scalar" (one value), "list" (one value per stage), "nested" (per stage: one value, or
one per branch), "one_or_list" (one value, or a list of them).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from common import safeio
from common.errors import ConfigError

DEVICES = ("cpu", "gpu", "dsp")
BLOCK_TYPES = ("res_basic_block", "res_bottleneck_block", "mbconv")
STEM_TYPES = ("res_stem_in", "simple_stem_in")
ACTIVATIONS = ("relu", "silu")


@dataclasses.dataclass(frozen=True)
class Key:
  """One key: `shape` of values, each of `type` ("int", "number", "bool", "str") within the range."""

  type: str
  shape: str = "scalar"
  required: bool = False
  lo: float | None = None  # inclusive lower bound (numbers)
  hi: float | None = None  # inclusive upper bound (numbers)
  lo_open: bool = False  # the lower bound itself is excluded
  choices: tuple[Any, ...] | None = None
  odd: bool = False
  non_empty: bool = False

  def allowed(self) -> str:
    if self.choices is not None:
      return f"one of {list(self.choices)}"
    kind = {"int": "an integer", "number": "a number", "bool": "true or false", "str": "a string"}[self.type]
    if self.lo is not None and self.hi is not None:
      rng = f" in {'(' if self.lo_open else '['}{self.lo}, {self.hi}]"
    elif self.lo is not None:
      rng = f" {'>' if self.lo_open else '>='} {self.lo}"
    else:
      rng = ""
    return f"{kind}{rng}{' (odd)' if self.odd else ''}"


SCHEMA: dict[str, dict[str, Key]] = {
  "ANYNET": {
    "STEM_TYPE": Key("str", required=True, choices=STEM_TYPES),
    "STEM_W": Key("int", required=True, lo=1),
    "STEM_K": Key("int", lo=1, odd=True),
    "BLOCK_TYPE": Key("str", required=True, choices=BLOCK_TYPES),
    "STRIDES": Key("int", "nested", required=True, choices=(1, 2)),
    "DEPTHS": Key("int", "nested", required=True, lo=1, non_empty=True),
    "WIDTHS": Key("int", "nested", required=True, lo=1),
    "BOT_MULS": Key("number", "nested", required=True, lo=0, lo_open=True),
    "GROUP_WS": Key("int", "nested", lo=1),
    "KERNELS": Key("int", "list", lo=1, odd=True),
    "DEVICES": Key("str", "list", required=True, choices=DEVICES, non_empty=True),
    "STEM_DEVICE": Key("str", choices=DEVICES),
    "HEAD_DEVICE": Key("str", choices=DEVICES),
    "MERGE_DEVICE": Key("str", choices=DEVICES),
    "ORIGINAL_WIDTHS": Key("int", "list", lo=1),
    "HEAD_W": Key("int", lo=0),
    "SE_ON": Key("bool"),
    "SE_R": Key("number", lo=0, hi=1, lo_open=True),
    "MB_VER": Key("int", choices=(1, 2)),
    "ACTIVATION_FUN": Key("str", "one_or_list", choices=ACTIVATIONS),
  },
  "MODEL": {
    "TYPE": Key("str"),
    "NUM_CLASSES": Key("int", lo=2),
    "ACTIVATION_FUN": Key("str", choices=ACTIVATIONS),
  },
}


def _error(name: str, key: str, value: Any, allowed: str) -> ConfigError:
  return ConfigError(f"{name}: {key} = {safeio.quote(value)}: {allowed}")


def _is_type(v: Any, kind: str) -> bool:
  if kind == "bool":
    return isinstance(v, bool)
  if isinstance(v, bool):
    return False
  if kind == "int":
    return isinstance(v, int)
  if kind == "number":
    return isinstance(v, int | float) and math.isfinite(v)
  return isinstance(v, str)


def _check_value(name: str, key: str, v: Any, spec: Key) -> None:
  ok = _is_type(v, spec.type)
  if ok and spec.choices is not None:
    ok = v in spec.choices
  if ok and spec.lo is not None:
    ok = v > spec.lo if spec.lo_open else v >= spec.lo
  if ok and spec.hi is not None:
    ok = v <= spec.hi
  if ok and spec.odd:
    ok = v % 2 == 1
  if not ok:
    raise _error(name, key, v, f"must be {spec.allowed()}")


def _check_list(name: str, key: str, v: Any, spec: Key, what: str) -> list:
  if not isinstance(v, list) or (spec.non_empty and not v):
    raise _error(name, key, v, f"must be a {'non-empty ' if spec.non_empty else ''}list of {what}")
  return v


def check_key(name: str, key: str, v: Any, spec: Key) -> None:
  """Checks one key's value `v` against `spec`; `key` is its dotted name (`ANYNET.WIDTHS`)."""
  if spec.shape == "scalar" or (spec.shape == "one_or_list" and not isinstance(v, list)):
    _check_value(name, key, v, spec)
    return
  if spec.shape in ("list", "one_or_list"):
    for i, x in enumerate(_check_list(name, key, v, spec, spec.allowed())):
      _check_value(name, f"{key}[{i}]", x, spec)
    return
  for i, x in enumerate(_check_list(name, key, v, spec, f"per-stage values or lists of {spec.allowed()}")):
    if not isinstance(x, list):
      _check_value(name, f"{key}[{i}]", x, spec)
      continue
    if not x:
      raise _error(name, f"{key}[{i}]", x, f"must be one value or a non-empty list of {spec.allowed()}")
    for j, y in enumerate(x):
      _check_value(name, f"{key}[{i}][{j}]", y, spec)


def check(doc: Any, name: str = "config") -> None:
  """Checks every key of the sections of `SCHEMA` in a parsed network document (ConfigError)."""
  if not isinstance(doc, Mapping) or not isinstance(doc.get("ANYNET"), Mapping):
    raise ConfigError(f"{name}: no ANYNET section; expected the pycls/NN-Stretch YAML schema")
  for section, keys in SCHEMA.items():
    body = doc.get(section)
    if body is None and section != "ANYNET":
      continue
    if not isinstance(body, Mapping):
      raise _error(name, section, body, "must be a mapping of keys to values")
    unknown = sorted(str(k) for k in body if k not in keys)
    if unknown:
      raise ConfigError(f"{name}: {section} has unknown keys {unknown}; the known keys are {sorted(keys)}")
    missing = [k for k, spec in keys.items() if spec.required and k not in body]
    if missing:
      raise ConfigError(f"{name}: {section} is missing {missing}")
    for key, value in body.items():
      check_key(name, f"{section}.{key}", value, keys[key])
