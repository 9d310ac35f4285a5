"""Every key of every config file and variant can be set from the command line.

For each `<package>/configs/*.py[:VARIANT]` (tests/common/config_walk.py finds them), one command
line sets every key at once to a new value of its type (`--config.KEY=VALUE`, through
the `--config` flag of every `edgeinfer` command, defined as
`common.app.define_flags` defines it), and each must arrive. A key
whose default is None can be set only when it is a typed placeholder
(`ml_collections.config_dict.placeholder(int)`): ml_collections refuses to override a plain None.
Parsing only; no step runs.
"""

from __future__ import annotations

import pytest
from absl import flags
from config_walk import config_args, field_type, leaves
from ml_collections import config_flags

from common import app


def new_value(kind: type, value) -> tuple[str, object]:
  """(command-line text, parsed value) of a value of type `kind` that differs from `value`."""
  if kind is type(None):
    raise AssertionError("a None default without a type cannot be set: use config_dict.placeholder(TYPE)")
  if kind is bool:
    return str(not value).lower(), not value
  if kind is int:
    v = 7 if value is None else value + 1
    return str(v), v
  if kind is float:
    v = 0.5 if value is None else value / 2 + 0.25
    return repr(v), v
  if kind is str:
    v = f"{value or ''}x"
    return v, v
  if kind is tuple:
    v = tuple(reversed(value)) if len(value) > 1 else value
    return repr(v), v
  raise AssertionError(f"a config value of type {kind.__name__}: teach this test its command-line form")


def _override_argv(config_arg: str) -> tuple[list[str], dict[str, object]]:
  config = app.load_config_file(config_arg)
  argv, want = [], {}
  for key, value in leaves(config):
    text, parsed = new_value(field_type(config, key), value)
    argv.append(f"--config.{key}={text}")
    want[key] = parsed
  return argv, want


def parse(config_arg: str, overrides: list[str]):
  """The config that `edgeinfer ... --config=config_arg *overrides` gets: the `--config` flag defined
  as `common.app.define_flags` does (a locked config file), on fresh flags (absl defines a flag per
  key once per FlagValues, so one process cannot parse the global flags twice)."""
  fv = flags.FlagValues()
  argv = ["edgeinfer", "--config=" + app.resolve_config_path(config_arg), *overrides]
  config_flags.DEFINE_config_file("config", None, "", flag_values=fv, lock_config=True, sys_argv=argv)
  fv(argv)
  return fv.config


@pytest.mark.parametrize("config_arg", config_args())
def test_every_key_can_be_set_from_the_command_line(config_arg):
  overrides, want = _override_argv(config_arg)
  got = dict(leaves(parse(config_arg, overrides)))
  wrong = {k: (got[k], v) for k, v in want.items() if got[k] != v}
  assert not wrong, wrong


def test_the_walk_covers_every_package_and_variant():
  args = config_args()
  assert {a.split("/")[0] for a in args} == {"agile", "offload", "coinfer", "subnets", "branching", "launch"}
  assert len(args) >= 32
  assert sum(1 for a in args for _ in leaves(app.load_config_file(a))) > 1000
