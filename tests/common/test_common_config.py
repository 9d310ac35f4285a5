"""Config validation: messages name the key, the value and the allowed range; the CLI exits
non-zero with that message and no traceback."""

import subprocess
import sys
from dataclasses import dataclass

import ml_collections
import pytest

from common import config as cfg
from common.errors import ConfigError
from tests.conftest import REPO_ROOT


def _config():
  return ml_collections.ConfigDict({"train": {"lr": 0.1, "epochs": 3, "opt": "sgd"}, "model": {"width": 8}})


def test_check_range_accepts_and_rejects():
  c = _config()
  cfg.check_range(c, "train.lr", 0.0, 1.0, lo_open=True)
  with pytest.raises(ConfigError, match=r"config\.train\.lr = 0\.1: must be in \(0\.5, 1\.0\]"):
    cfg.check_range(c, "train.lr", 0.5, 1.0, lo_open=True)
  with pytest.raises(ConfigError, match="integer"):
    cfg.check_range(c, "train.lr", 0, 10, integer=True)
  with pytest.raises(ConfigError, match="missing"):
    cfg.check_range(c, "train.momentum", 0, 1)
  with pytest.raises(ConfigError, match=r"one of \['adam'\]"):
    cfg.check_choice(c, "train.opt", ["adam"])


def test_to_dataclass_names_unknown_keys():
  @dataclass(frozen=True)
  class M:
    width: int

  assert cfg.to_dataclass(M, _config().model) == M(width=8)
  c = _config()
  c.model.depth = 3
  with pytest.raises(ConfigError, match="unknown keys \\['depth'\\]"):
    cfg.to_dataclass(M, c.model)


def test_cli_rejects_out_of_range_value_without_traceback(tmp_path):
  res = subprocess.run(
    [
      sys.executable,
      "-m",
      "launch.quickstart",
      "--only=common",
      f"--workdir={tmp_path}",
      "--config.train.learning_rate=-1",
    ],
    cwd=REPO_ROOT,
    capture_output=True,
    text=True,
  )
  assert res.returncode == 2
  assert "config.train.learning_rate = -1.0: must be in (0.0, 10.0]" in res.stderr
  assert "Traceback" not in res.stderr
