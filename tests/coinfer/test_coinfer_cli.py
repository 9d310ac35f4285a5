"""The command line (`edgeinfer coinfer`, the one app): --config.KEY=VALUE sets nested keys and
lists, and a bad config is one line on stderr and exit status 2."""

import json
import subprocess
import sys

import pytest


def _cli(*args):
  cmd = [sys.executable, "-m", "coinfer.main", *args]
  return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(
  "override, needle",
  [
    ("--config.init.nope=3", "init.nope"),  # unknown key
    ("--config.stream.horizon=0", "stream.horizon"),  # validated after the override
    ("--config.init.epochs=abc", "init.epochs"),  # a bad value
  ],
)
def test_bad_config_is_one_line_exit_2(tmp_path, override, needle):
  r = _cli("init", "--config=coinfer/configs/quick.py:tiny", f"--workdir={tmp_path / 'w'}", override)
  assert r.returncode == 2, r.stderr[-2000:]
  lines = r.stderr.strip().splitlines()
  assert len(lines) == 1 and needle in lines[0] and "Traceback" not in r.stderr, r.stderr[-2000:]
  assert not (tmp_path / "w").exists()  # rejected before anything is written


def test_overrides_set_typed_values(tmp_path):
  w = tmp_path / "w"
  r = _cli(
    "report",
    "--config=coinfer/configs/quick.py:tiny",
    f"--workdir={w}",
    "--config.init.epochs=7",
    "--config.stream.method=dp",
    "--config.individual.subset=[[2, 8]]",
  )
  assert r.returncode == 0, r.stderr[-2000:]
  c = json.loads((w / "config.json").read_text())
  assert c["init"]["epochs"] == 7 and c["stream"]["method"] == "dp" and c["individual"]["subset"] == [[2, 8]]
  assert (w / "report.md").exists()
