"""Conformance with a stock Triton server: the quick coinfer run's repository served by NVIDIA's
`tritonserver` (the nvidia-pytriton wheel's, each model.onnx run in onnxruntime by a Python
callable, `common.serving.triton`) and by edgeinfer's server; the device runtime streams every
exported setup against both: every frame answered, the same predictions, accuracy and bytes per
frame. Marked `triton` (its own CI tier): pytriton needs numpy < 2, so it lives in a second
interpreter, EDGEINFER_TRITON_PYTHON (default .venv-triton/bin/python in the checkout; make it
with `python3 -m venv .venv-triton && .venv-triton/bin/pip install -r requirements-triton.txt`)."""

import os
import sys
from pathlib import Path

import numpy as np
import pytest

from coinfer import deploy
from common.errors import ServingError
from common.serving import device as dev
from common.serving.link import Link
from common.serving.process import ROOT, start_server, start_triton, stop_server
from common.traces import Trace

pytestmark = pytest.mark.triton
FAST_LINK = Link(Trace("fast", np.asarray([0.0]), np.asarray([1e9]), 10.0))
FRAMES = 48


def triton_python() -> str:
  path = os.environ.get("EDGEINFER_TRITON_PYTHON") or str(ROOT / ".venv-triton" / "bin" / "python")
  if not Path(path).exists():
    pytest.fail(
      f"no interpreter with nvidia-pytriton at {path}: python3 -m venv .venv-triton && "
      ".venv-triton/bin/pip install -r requirements-triton.txt (or set EDGEINFER_TRITON_PYTHON)"
    )
  return path


def stream_every_setup(dep, url: str) -> dict:
  """setup -> the device runtime's record of FRAMES frames with that setup fixed, against `url`."""
  client = dev.Client(url)
  client.connect(60.0)
  stream = deploy.stream_settings(dep, fps=100.0, deadline_s=5.0)
  try:
    return {
      name: deploy.run(dep, client, FAST_LINK, frames=FRAMES, controller=f"fixed:{name}", stream=stream)
      for name in dep.names
    }
  finally:
    client.close()


def start_stock_triton(repo: Path):
  """start_triton, once more should the first start fail (a third-party binary's start is the one
  part here that is not the project's; the first failure's log tail goes to stderr). Should
  tritonserver itself hang twice (the launcher's watchdog: "not ready within"), the test is
  skipped with its log tail, as a test whose tool this machine lacks; any other failure (the
  repository refused, the launcher's own error) fails it."""
  why = ""
  for attempt in (1, 2):
    try:
      return start_triton(repo, python=triton_python())
    except ServingError as e:
      if "not ready within" not in str(e):
        raise
      why = str(e)[-1500:]
      print(f"start {attempt} of the Triton server hung: {why}", file=sys.stderr)
  pytest.skip(f"tritonserver did not become ready on this machine (twice): {why}")


def test_device_runtime_against_stock_triton_as_against_edgeinfer(coinfer_fast_run):
  workdir = coinfer_fast_run[0]
  repo = workdir / "exports" / "repository"
  dep = deploy.load(workdir)
  records = {}
  for server, start in (
    ("edgeinfer", start_server),
    ("triton", start_stock_triton),
  ):
    proc, port = start(repo)
    try:
      records[server] = stream_every_setup(dep, f"127.0.0.1:{port}")
    finally:
      stop_server(proc)
  for name in dep.names:
    ours, theirs = records["edgeinfer"][name], records["triton"][name]
    assert theirs["summary"]["status"]["ok"] == FRAMES, (name, theirs["summary"])
    assert ours["summary"]["status"]["ok"] == FRAMES, (name, ours["summary"])
    assert theirs["frames"]["prediction"] == ours["frames"]["prediction"], name
    assert theirs["summary"]["accuracy"] == ours["summary"]["accuracy"], name
    assert theirs["summary"]["bytes_per_frame"] == ours["summary"]["bytes_per_frame"], name


def test_a_triton_server_not_ready_in_time_says_why_and_leaves_nothing_running(coinfer_fast_run):
  """The launcher's watchdog: past --startup_timeout the caller gets tritonserver's log tail, and
  neither tritonserver nor its workspace outlives the launcher."""
  import subprocess
  import tempfile

  repo = coinfer_fast_run[0] / "exports" / "repository"
  before = set(Path(tempfile.gettempdir()).glob("pyt-*"))
  with pytest.raises(ServingError, match=r"(?s)I1.*not ready within 1 s"):
    start_triton(repo, python=triton_python(), timeout_s=31.0)
  assert set(Path(tempfile.gettempdir()).glob("pyt-*")) == before
  left = subprocess.run(["pgrep", "-f", str(repo)], capture_output=True, text=True).stdout.split()
  assert not left, left
