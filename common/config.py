"""Config validation helpers.

Configs are `ml_collections.ConfigDict`s, locked, and validated once at the entry
point. Each check raises `ConfigError` with a message that names the key, the
value and what is allowed, e.g.::

  config.train.learning_rate = -1.0: must be in (0, inf)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from typing import Any

import ml_collections

from common.errors import ConfigError


def get(config: ml_collections.ConfigDict, key: str) -> Any:
  """Returns `config[key]` for a dotted key, or raises `ConfigError`."""
  node: Any = config
  for part in key.split("."):
    try:
      node = node[part]
    except (KeyError, AttributeError, TypeError):
      raise ConfigError(f"config.{key} is missing") from None
  return node


def _fmt_range(lo, hi, lo_open, hi_open) -> str:
  left = "(" if lo_open else "["
  right = ")" if hi_open else "]"
  lo_s = "-inf" if lo is None else repr(lo)
  hi_s = "inf" if hi is None else repr(hi)
  return f"{left}{lo_s}, {hi_s}{right}"


def check_range(
  config: ml_collections.ConfigDict,
  key: str,
  lo: float | None = None,
  hi: float | None = None,
  *,
  lo_open: bool = False,
  hi_open: bool = False,
  integer: bool = False,
) -> None:
  """Checks that a numeric config value lies in a range.

  Args:
    config: the config.
    key: dotted key, e.g. "train.learning_rate".
    lo, hi: bounds; None means unbounded.
    lo_open, hi_open: whether the bound itself is excluded.
    integer: the value must be an int.
  """
  value = get(config, key)
  allowed = _fmt_range(lo, hi, lo_open or lo is None, hi_open or hi is None)
  kind = "an integer" if integer else "a number"
  if isinstance(value, bool) or not isinstance(value, int | float):
    raise ConfigError(f"config.{key} = {value!r}: must be {kind} in {allowed}")
  if integer and not isinstance(value, int):
    raise ConfigError(f"config.{key} = {value!r}: must be {kind} in {allowed}")
  if isinstance(value, float) and math.isnan(value):
    raise ConfigError(f"config.{key} = nan: must be {kind} in {allowed}")
  bad = False
  if lo is not None:
    bad |= value <= lo if lo_open else value < lo
  if hi is not None:
    bad |= value >= hi if hi_open else value > hi
  if bad:
    raise ConfigError(f"config.{key} = {value!r}: must be in {allowed}")


SEED_MAX = 2**63 - 1  # seeds are int64 (jax.random.key, numpy's SeedSequence)


def check_seed(config: ml_collections.ConfigDict, key: str = "seed") -> None:
  """Checks that a seed is an integer in [0, 2**63 - 1] (it must fit in 64 bits)."""
  check_range(config, key, 0, SEED_MAX, integer=True)


INT_MAX = 2**31 - 1  # counts, sizes, steps: what a config int may hold (seeds excepted, see SEED_MAX)


def check_numbers(config: ml_collections.ConfigDict, *, seeds: Iterable[str] = ("seed",)) -> None:
  """Checks every number in `config` (nested sections, lists and tuples too): floats finite, ints
  within +-INT_MAX (the keys `seeds` are checked by `check_seed`). A NaN or a 30-digit count is
  never meant, and would otherwise surface deep inside a run (an overflow, a huge allocation)."""
  seeds = set(seeds)

  def walk(value: Any, key: str) -> None:
    if isinstance(value, bool) or key in seeds:
      return
    if isinstance(value, float) and not math.isfinite(value):
      raise ConfigError(f"config.{key} = {value!r}: must be a finite number")
    if isinstance(value, int) and abs(value) > INT_MAX:
      raise ConfigError(f"config.{key} = {value}: too large (at most {INT_MAX} in magnitude)")
    if isinstance(value, list | tuple):
      for i, v in enumerate(value):
        walk(v, f"{key}[{i}]")
    elif hasattr(value, "items"):
      for k, v in value.items():
        walk(v, f"{key}.{k}" if key else str(k))

  walk(config, "")


_KINDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string", tuple: "a sequence"}


def _fits(value: Any, kind: type) -> bool:
  if kind is bool:
    return isinstance(value, bool)
  if isinstance(value, bool):
    return False
  if kind is float:
    return isinstance(value, int | float)
  if kind is tuple:
    return isinstance(value, list | tuple)
  return isinstance(value, kind)


def _kind(node: ml_collections.ConfigDict, key: str) -> type | None:
  kind = node.get_type(key)
  return tuple if kind is list else kind if kind in _KINDS else None


def check_types(
  config: ml_collections.ConfigDict, reference: ml_collections.ConfigDict, prefix: str = ""
) -> None:
  """Checks that every key of `config` that `reference` (the technique's default config) also has
  holds a value of the reference's type: a bool, an integer, a number, a string or a sequence, and
  a sequence's items the type of the reference's items. A typed placeholder
  (`config_dict.placeholder(int)`) may also hold None. A config file can set any value; without
  this a count given as "3" or a path given as 3 reaches the code that reads it.
  """
  for key in config.keys():
    if key not in reference:
      continue
    value, ref, name = config[key], reference[key], f"{prefix}{key}"
    if isinstance(ref, ml_collections.ConfigDict):
      if not isinstance(value, ml_collections.ConfigDict):
        raise ConfigError(f"config.{name} = {_short(value)}: must be a section (keys {sorted(ref.keys())})")
      check_types(value, ref, f"{name}.")
      continue
    kind = _kind(reference, key)
    if kind is None or (value is None and ref is None):
      continue
    if value is None and config.get_type(key) is not type(None):
      continue  # a typed placeholder left unset (its type is the field's, its value None)
    if not _fits(value, kind):
      raise ConfigError(f"config.{name} = {_short(value)}: must be {_KINDS[kind]}, as in the default config")
    items = {type(x) for x in ref} if kind is tuple else set()
    if len(items) == 1 and (item := items.pop()) in _KINDS and item is not tuple:
      for i, x in enumerate(value):
        if not _fits(x, item):
          raise ConfigError(f"config.{name}[{i}] = {_short(x)}: must be {_KINDS[item]}")


def _short(value: Any) -> str:
  from common.safeio import quote

  return quote(value, 80)


def check_choice(config: ml_collections.ConfigDict, key: str, choices: Iterable[Any]) -> None:
  """Checks that a config value is one of `choices`."""
  value = get(config, key)
  choices = list(choices)
  if value not in choices:
    raise ConfigError(f"config.{key} = {value!r}: must be one of {choices}")


def check_positive_ints(config: ml_collections.ConfigDict, key: str) -> None:
  """Checks that a config value is a non-empty sequence of positive ints."""
  value = get(config, key)
  ok = isinstance(value, list | tuple) and len(value) > 0
  ok = ok and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
  if not ok:
    raise ConfigError(f"config.{key} = {value!r}: must be a non-empty list of positive integers")


def to_dataclass(cls: type, section: ml_collections.ConfigDict | dict, key: str = "model"):
  """Turns a config section into the frozen dataclass `cls`, naming unknown keys."""
  data = section.to_dict() if hasattr(section, "to_dict") else dict(section)
  names = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(data) - names)
  if unknown:
    raise ConfigError(f"config.{key} has unknown keys {unknown}; allowed keys are {sorted(names)}")
  for name, value in data.items():
    if isinstance(value, list):
      data[name] = tuple(value)
  try:
    return cls(**data)
  except TypeError as e:
    raise ConfigError(f"config.{key}: {e}") from None


def variant(arg: str | None, allowed: Iterable[str]) -> str | None:
  """Checks a config file's variant (`--config=FILE.py:VARIANT`, `get_config(arg)`); None is the default."""
  allowed = list(allowed)
  if arg not in (None, "") and arg not in allowed:
    raise ConfigError(f"config variant {arg!r}: must be one of {allowed} (or none)")
  return arg or None
