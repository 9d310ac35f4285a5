"""A tiny coinfer run with int8 and float exports in the model-repository layout, trained once
per test session (the quickstart stage's fast config: 8x8 digits, 9 setups, a few steps)."""

import pytest


def tiny_deploy_config():
  from launch.stages.coinfer import fast_config

  c = fast_config()
  c.export.int8 = True
  c.export.setups = [[1, 1], [4, 8]]
  return c


@pytest.fixture(scope="session")
def deploy_run(tmp_path_factory):
  import os
  import pathlib

  from coinfer.main import run_step
  from common.cli import save_config

  if os.environ.get("EDGEINFER_COINFER_DEPLOY_RUN"):  # reuse a run made by this fixture
    return pathlib.Path(os.environ["EDGEINFER_COINFER_DEPLOY_RUN"])
  config = tiny_deploy_config()
  workdir = tmp_path_factory.mktemp("coinfer_deploy")
  save_config(config, workdir)
  for step in ("init", "cluster", "distill", "export"):
    run_step(step, config, workdir, "I-D-C" if step == "distill" else None)
  return workdir
