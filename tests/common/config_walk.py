"""Every config file and variant of the project, and every key in each (shared by the tests that
walk them: tests/common/test_common_config_keys.py, tests/common/test_common_corpus.py)."""

from __future__ import annotations

import ast
import importlib.util
from collections.abc import Iterator
from pathlib import Path

from common.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("agile", "offload", "coinfer", "subnets", "branching", "launch")


def config_files() -> list[str]:
  """Every `<package>/configs/*.py` with a get_config(), relative to the checkout."""
  out = []
  for pkg in PACKAGES:
    for p in sorted((ROOT / pkg / "configs").glob("*.py")):
      if "def get_config" in p.read_text():
        out.append(str(p.relative_to(ROOT)))
  return out


def variants(rel: str) -> list[str]:
  """The variants of a config file, read from the ConfigError of an unknown one ("" = the default)."""
  spec = importlib.util.spec_from_file_location("walked_config", ROOT / rel)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  try:
    module.get_config("no such variant")
  except ConfigError as e:
    return ["", *ast.literal_eval(str(e).split("must be one of ", 1)[1].split("]", 1)[0] + "]")]
  raise AssertionError(f"{rel}: get_config accepts any variant")


def config_args() -> list[str]:
  """`FILE` and `FILE:VARIANT` for every config file and variant."""
  return [f"{rel}:{v}" if v else rel for rel in config_files() for v in variants(rel)]


def leaves(node, prefix: str = "") -> Iterator[tuple[str, object]]:
  """(dotted key, value) of every leaf of a ConfigDict, placeholders (None) included."""
  for k in node.keys():
    v = node[k]
    if hasattr(v, "items"):
      yield from leaves(v, f"{prefix}{k}.")
    else:
      yield f"{prefix}{k}", v


def field_type(config, key: str) -> type:
  """The type a locked ConfigDict holds for `key` (a placeholder's declared type when unset)."""
  *parents, leaf = key.split(".")
  node = config
  for part in parents:
    node = node[part]
  return node.get_type(leaf)
