"""The tiny agile run (the quickstart stage with fast=True: digits, one epoch each, float and
int8 exports, 64 parity images), made once per test session for the deploy tests."""

import pytest


@pytest.fixture(scope="session")
def agile_fast_run(tmp_path_factory):
  """(workdir, the stage's headline numbers)."""
  from launch.stages import agile as stage

  workdir = tmp_path_factory.mktemp("agile")
  return workdir, stage.run(workdir, fast=True)
