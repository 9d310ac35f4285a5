"""The tiny coinfer run (the quickstart stage with fast=True: 8x8 digits, 9 setups, a few
steps, float and int8 exports in the model-repository layout), made once per test session for
the pipeline tests and the deploy tests."""

import pytest


@pytest.fixture(scope="session")
def coinfer_fast_run(tmp_path_factory):
  """(workdir, the stage's headline numbers)."""
  from launch.stages import coinfer as stage

  workdir = tmp_path_factory.mktemp("coinfer")
  return workdir, stage.run(workdir, fast=True)
