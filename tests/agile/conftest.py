"""The tiny agile run (the quickstart stage with fast=True: digits, one epoch each, float and
int8 exports, 64 parity images), made once per test session for the deploy tests; under
pytest-xdist the workers share one run (the first builds it under a file lock)."""

import fcntl
import json

import pytest


@pytest.fixture(scope="session")
def agile_fast_run(tmp_path_factory, worker_id):
  """(workdir, the stage's headline numbers)."""
  from launch.stages import agile as stage

  if worker_id == "master":
    workdir = tmp_path_factory.mktemp("agile")
    return workdir, stage.run(workdir, fast=True)
  workdir = tmp_path_factory.getbasetemp().parent / "agile_fast_run"
  workdir.mkdir(exist_ok=True)
  done = workdir / "stage.json"
  with open(workdir.parent / "agile_fast_run.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not done.exists():
      done.write_text(json.dumps(stage.run(workdir, fast=True)))
  return workdir, json.loads(done.read_text())
