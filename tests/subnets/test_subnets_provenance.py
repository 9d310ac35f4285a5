"""A reused output must have been made from the same config; damaged outputs are named."""

import shutil

import numpy as np
import pytest

from common.errors import ConfigError, DataError
from subnets import pipeline
from tests.subnets.test_subnets_pipeline import _tiny


@pytest.fixture(scope="module")
def made(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("reds")
  pipeline.run_step("knapsack", _tiny(), workdir, show_progress=False)
  return workdir


@pytest.fixture
def workdir(made, tmp_path):
  return shutil.copytree(made, tmp_path / "run")


def _snapshot(d):
  return {p.relative_to(d): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def test_a_changed_budget_is_refused_and_nothing_is_written(workdir):
  before = _snapshot(workdir)
  c = _tiny()
  c.knapsack.budgets = (0.3, 0.6)
  with pytest.raises(
    ConfigError, match=r"knapsack.json was made from a different config: config\.knapsack\.budgets"
  ):
    pipeline.run_step("knapsack", c, workdir, show_progress=False)
  assert _snapshot(workdir) == before
  # The same config reuses the outputs.
  again = pipeline.run_step("knapsack", _tiny(), workdir, show_progress=False)
  assert again["budgets"] == list(_tiny().knapsack.budgets)


def test_a_change_the_output_does_not_depend_on_is_accepted(workdir):
  c = _tiny()
  c.export.latency_repeats = 7  # only export.json depends on it, and there is none yet
  pipeline.run_step("knapsack", c, workdir, show_progress=False)


def test_an_output_without_its_stamp_is_refused(workdir):
  (workdir / "knapsack.json.config.json").unlink()
  with pytest.raises(ConfigError, match="records no config"):
    pipeline.run_step("knapsack", _tiny(), workdir, show_progress=False)


@pytest.mark.parametrize(
  "damage",
  [
    lambda p: p.write_bytes(p.read_bytes()[:40]),
    lambda p: p.write_bytes(b"\x00\xff garbage"),
    lambda p: p.write_text("[1, 2, 3]"),
    lambda p: p.write_text('{"units": [6, 8, 8]}'),
  ],
  ids=["truncated", "binary", "a list", "missing keys"],
)
def test_a_damaged_knapsack_file_is_named(workdir, damage):
  damage(workdir / "knapsack.json")
  with pytest.raises(DataError, match="knapsack.json"):
    pipeline.run_step("knapsack", _tiny(), workdir, show_progress=False)


@pytest.mark.parametrize("kind", ["garbage", "wrong shape", "missing array", "nan"])
def test_a_damaged_importance_file_is_named(workdir, kind):
  path = workdir / "importance.npz"
  if kind == "garbage":
    path.write_bytes(b"PK\x03\x04 not really a zip")
  else:
    with np.load(path) as z:
      flat = {k: z[k] for k in z.files}
    if kind == "wrong shape":
      flat["reds_0"] = flat["reds_0"][:-1]
    elif kind == "missing array":
      del flat["magnitude_1"]
    else:
      flat["random_2"] = np.full_like(flat["random_2"], np.nan)
    with open(path, "wb") as f:
      np.savez(f, **flat)
  with pytest.raises(DataError, match="importance"):
    pipeline.run_step("importance", _tiny(), workdir, show_progress=False)
