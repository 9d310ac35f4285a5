"""What the shared layer writes: file modes, atomic plots and arrays, a torn metrics.jsonl,
and a rejected config that leaves the workdir as it was."""

import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

from common import report
from common import train as train_lib
from common.errors import DataError
from common.export import write_atomic
from tests.conftest import REPO_ROOT


@pytest.fixture
def umask_022():
  old = os.umask(0o022)
  yield
  os.umask(old)


def test_write_atomic_keeps_the_umask_mode(tmp_path, umask_022):
  path = write_atomic(tmp_path / "report.md", b"x")
  assert path.stat().st_mode & 0o777 == 0o644
  os.umask(0o077)
  assert write_atomic(tmp_path / "private.md", b"x").stat().st_mode & 0o777 == 0o600


def test_plots_and_arrays_are_written_whole_and_readable(tmp_path, umask_022):
  rep = report.Report("t", tmp_path)
  png = rep.line_plot("a.png", {"s": ([0, 1], [1, 2])}, xlabel="x", ylabel="y")
  assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert png.stat().st_mode & 0o777 == 0o644
  arr = np.arange(6, dtype=np.int32).reshape(2, 3)
  npy = report.save_npy(tmp_path / "a.npy", arr)
  np.testing.assert_array_equal(np.load(npy), arr)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npy", "a.png"]  # no temporary names left


def _write_rows(workdir, n):
  w = train_lib.MetricsWriter(workdir)
  for i in range(n):
    w.write(i, {"loss": float(i)})
  return w


def test_metrics_torn_last_line_is_dropped_on_read_and_cut_on_write(tmp_path):
  w = _write_rows(tmp_path, 3)
  with open(w.path, "a") as f:
    f.write('{"step": 3, "lo')  # a run killed mid-write
  with pytest.warns(UserWarning, match="torn last line"):
    assert [r["step"] for r in train_lib.MetricsWriter(tmp_path).read()] == [0, 1, 2]
  train_lib.MetricsWriter(tmp_path).write(3, {"loss": 3.0})  # the next run appends cleanly
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    rows = train_lib.MetricsWriter(tmp_path).read()
  assert [r["step"] for r in rows] == [0, 1, 2, 3]


def test_metrics_whole_last_line_without_newline_is_kept(tmp_path):
  w = _write_rows(tmp_path, 2)
  w.path.write_bytes(w.path.read_bytes().rstrip(b"\n"))
  train_lib.MetricsWriter(tmp_path).write(2, {"loss": 2.0})
  assert [r["step"] for r in train_lib.MetricsWriter(tmp_path).read()] == [0, 1, 2]


@pytest.mark.parametrize("bad", [b"not json", b"[1, 2]", b"\xff\xfe\x00garbage"])
def test_metrics_damaged_middle_line_names_the_file_and_line(tmp_path, bad):
  w = _write_rows(tmp_path, 3)
  lines = w.path.read_bytes().split(b"\n")
  lines[1] = bad
  w.path.write_bytes(b"\n".join(lines))
  with pytest.raises(DataError, match=r"metrics.jsonl line 2"):
    train_lib.MetricsWriter(tmp_path).read()


@pytest.mark.parametrize(
  "flag",
  [
    "--config.train.num_epochs=0",
    "--config.data.limit=-1",
    "--config.seed=-3",
    "--config.train.learning_rate=-1.0",
  ],
)
def test_rejected_config_leaves_the_workdir_unchanged(tmp_path, flag):
  stage = tmp_path / "common"
  stage.mkdir()
  good = json.dumps({"seed": 0, "note": "a finished run"}).encode()
  (stage / "config.json").write_bytes(good)
  proc = subprocess.run(
    [sys.executable, "-m", "launch.quickstart", f"--workdir={tmp_path}", "--only=common", flag],
    cwd=REPO_ROOT,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr
  assert flag.split("=")[0].removeprefix("--") in proc.stderr
  assert (stage / "config.json").read_bytes() == good
  assert sorted(p.name for p in tmp_path.rglob("*")) == ["common", "config.json"]
