"""The one command line (common.app): flags, config files and variants, steps, one-line errors.

A small package written into tmp_path runs through `common.app` in a subprocess, as a user's
command would; every error must be one line on stderr, exit status 2, and leave the workdir as it was.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

PKG_MAIN = """
from absl import flags
from common import app, config as C
from common.errors import ConfigError

_EXTRA = flags.DEFINE_integer("extra", 1, "a package flag")

def validate(config):
  C.check_range(config, "train.lr", 0, lo_open=True)

def step_a(ctx):
  out = ctx.workdir / "a.json"
  out.write_text(__import__("json").dumps({"lr": ctx.config.train.lr, "sizes": list(ctx.config.model.sizes),
                                          "extra": _EXTRA.value, "name": ctx.config.name}))
  return {"wrote": str(out)}

def step_b(ctx):
  raise ConfigError("step b refuses")

def step_c(ctx):
  return {"workdir": str(ctx.workdir)}

APP = app.App("fakepkg", {"a": app.Step(step_a, "writes a.json"), "b": app.Step(step_b, "always refuses"),
                          "c": app.Step(step_c, "writes nothing", needs_workdir=False)},
              default_config="CONFIG", validate=validate, all_steps=("a", "b"), doc="A test package.")

def main(argv=None):
  app.run(APP, argv)

if __name__ == "__main__":
  main()
"""

PKG_CONFIG = """
import ml_collections
from common import config as C

def get_config(arg=None):
  arg = C.variant(arg, ("fast",))
  c = ml_collections.ConfigDict()
  c.name = arg or "default"
  c.train = ml_collections.ConfigDict({"lr": 0.5, "epochs": 3 if arg == "fast" else 30})
  c.model = ml_collections.ConfigDict({"sizes": (4, 8)})
  return c
"""


@pytest.fixture(scope="module")
def pkg(tmp_path_factory):
  base = tmp_path_factory.mktemp("app")
  (base / "fakepkg").mkdir()
  (base / "fakepkg" / "__init__.py").write_text("")
  cfg = base / "fakepkg" / "config.py"
  cfg.write_text(PKG_CONFIG)
  (base / "fakepkg" / "main.py").write_text(PKG_MAIN.replace("CONFIG", str(cfg)))
  return base


def run(pkg: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
  e = {**os.environ, "PYTHONPATH": f"{pkg}{os.pathsep}{ROOT}", **(env or {})}
  e.pop("EDGEINFER_DEBUG", None) if not env or "EDGEINFER_DEBUG" not in env else None
  return subprocess.run(
    [sys.executable, "-m", "fakepkg.main", *args], capture_output=True, text=True, env=e, cwd=pkg, timeout=120
  )


def test_nested_keys_tuples_variants_and_package_flags_are_read(pkg, tmp_path):
  w = tmp_path / "w"
  r = run(pkg, "a", f"--workdir={w}", "--config.train.lr=0.25", "--config.model.sizes=(2,3,5)", "--extra=7")
  assert r.returncode == 0, r.stderr
  got = json.loads((w / "a.json").read_text())
  assert got == {"lr": 0.25, "sizes": [2, 3, 5], "extra": 7, "name": "default"}
  saved = json.loads((w / "config.json").read_text())
  assert saved["train"] == {"lr": 0.25, "epochs": 30}
  r = run(pkg, "a", f"--workdir={w}", f"--config={pkg / 'fakepkg' / 'config.py'}:fast")
  assert r.returncode == 0, r.stderr
  assert json.loads((w / "config.json").read_text())["train"]["epochs"] == 3


BAD = [
  (["a", "--config.train.bogus=1"], "train.bogus"),
  (["a", "--config.train.lr=abc"], "--config.train.lr"),
  (["a", "--config.train.lr=-1"], "config.train.lr"),
  (["a", "--config=/nonexistent/cfg.py"], "/nonexistent/cfg.py"),
  (["a", "--config=CFGDIR"], "is not a Python config file"),
  (["a", "--config=CFG:slow"], "'slow'"),
  (["a", "--config=SYNTAX"], "SyntaxError"),
  (["a", "--config=NOGET"], "no get_config"),
  (["nope"], "nope"),
  ([], "expected a step"),
  (["a", "all"], "all alone"),
  (["a", "nope"], "nope"),
  (["a", "--bogus_flag=1"], "bogus_flag"),
  (["b"], "step b refuses"),
]


@pytest.mark.parametrize("args,named", BAD, ids=[n for _, n in BAD])
def test_bad_input_is_one_line_exit_2_and_the_workdir_is_unchanged(pkg, tmp_path, args, named):
  (tmp_path / "syntax.py").write_text("def get_config(:\n")
  (tmp_path / "noget.py").write_text("x = 1\n")
  cfg = str(pkg / "fakepkg" / "config.py")
  subs = {
    "CFGDIR": str(tmp_path),
    "CFG": cfg,
    "SYNTAX": str(tmp_path / "syntax.py"),
    "NOGET": str(tmp_path / "noget.py"),
  }
  args = [next((a.replace(k, v) for k, v in subs.items() if k in a), a) for a in args]
  w = tmp_path / "w"
  w.mkdir()
  (w / "config.json").write_text('{"good": 1}')
  r = run(pkg, *args, f"--workdir={w}")
  assert r.returncode == 2, (r.returncode, r.stderr)
  lines = r.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
  assert named in lines[0] and "Traceback" not in r.stderr
  if args and args[0] != "b":  # b runs after the config passed: its config.json is the new one
    assert sorted(p.name for p in w.iterdir()) == ["config.json"]
    assert (w / "config.json").read_text() == '{"good": 1}'


@pytest.mark.parametrize("flag", ["--debug", "--debug=true", "--debug=1"])
def test_debug_shows_the_traceback(pkg, tmp_path, flag):
  r = run(pkg, "a", f"--workdir={tmp_path}", "--config.train.lr=-1", flag)
  assert r.returncode != 0 and "Traceback" in r.stderr and "ConfigError" in r.stderr
  r = run(pkg, "a", f"--workdir={tmp_path}", "--config.train.lr=-1", flag, "--nodebug")
  assert r.returncode == 2 and "Traceback" not in r.stderr
  r = run(pkg, "a", f"--workdir={tmp_path}", "--config.train.lr=-1", env={"EDGEINFER_DEBUG": "1"})
  assert "Traceback" in r.stderr


def test_help_lists_steps_and_flags(pkg):
  r = run(pkg, "--help")
  assert r.returncode == 0
  for word in ("a ", "writes a.json", "b ", "always refuses", "all", "--config", "--workdir", "--extra"):
    assert word in r.stdout, word


def test_edgeinfer_help_lists_every_technique_and_its_steps():
  r = subprocess.run(
    [sys.executable, "-m", "launch.edgeinfer", "--help"],
    capture_output=True,
    text=True,
    cwd=ROOT,
    timeout=300,
  )
  assert r.returncode == 0, r.stderr
  from launch.edgeinfer import TECHNIQUES

  for name in TECHNIQUES:
    line = next(line for line in r.stdout.splitlines() if line.strip().startswith(name + " "))
    assert "|" in line, line
  r = subprocess.run(
    [sys.executable, "-m", "launch.edgeinfer", "bogus"], capture_output=True, text=True, cwd=ROOT
  )
  assert r.returncode == 2 and "bogus" in r.stderr


def test_several_steps_run_in_the_order_given(pkg, tmp_path):
  w = tmp_path / "w"
  r = run(pkg, "a", "b", f"--workdir={w}")  # a runs (writes a.json), then b refuses
  assert r.returncode == 2 and "step b refuses" in r.stderr, r.stderr
  assert r.stdout.startswith("a: ") and (w / "a.json").exists(), r.stdout
  r = run(pkg, "b", "a", f"--workdir={tmp_path / 'v'}")  # b first: a never runs
  assert r.returncode == 2 and not (tmp_path / "v" / "a.json").exists()


def test_a_step_that_writes_nothing_needs_no_workdir(pkg, tmp_path):
  r = run(pkg, "c")
  assert r.returncode == 0 and r.stdout.startswith("c: workdir=."), r.stderr
  r = run(pkg, "a")
  assert r.returncode == 2 and "--workdir is required" in r.stderr


def test_boolean_flags_are_read_as_absl_reads_them():
  from common.app import bool_flag

  assert bool_flag(["p", "--fast"], "fast") is True and bool_flag(["p", "--fast=false"], "fast") is False
  assert (
    bool_flag(["p", "--fast=1", "--nofast"], "fast") is False and bool_flag(["p", "--faster"], "fast") is None
  )
