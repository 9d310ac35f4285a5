"""Kill-and-resume, technique by technique: each training stage is killed with SIGKILL between
two checkpoints, rerun, and must end bitwise equal to an uninterrupted run.

Each technique runs its tiny config twice in subprocesses: once straight through (`full`) and
once killed in its stages in turn (`killed`). The kill is exact, not a race: `kill_hook/`'s
sitecustomize kills the process as it is about to save step KILL_AT of the chosen stage, so the
steps since the stage's previous checkpoint (CHECKPOINT_EVERY earlier) are lost and the rerun
must redo them. Where one command trains several models with the same code (coinfer's setups and
baselines, branching's two nets, offload's classifier pair) the last one is killed, so the rerun
must also skip the finished ones. Then every stage's last checkpoint (parameters, optimiser
state, step), every per-image result array and the result JSONs (timings aside) of the two
workdirs must be equal. (The common stage: test_common_resume.py; offload's DQN loop:
tests/offload/test_offload_train.py; two processes: test_common_multihost.py.)

About 6.5 minutes on 2 cores (21 processes, each tracing its programs again), so it is a tier of its
own, outside the suite's default selection: `pytest -n 2 -q -m killresume` (.ci/run runs it too).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from tests.conftest import REPO_ROOT

CHECKPOINT_EVERY = 2
KILL_AT = 4  # a stage killed here resumes from step 2 and redoes 3 and 4
HOOK = Path(__file__).parent / "kill_hook"


@dataclasses.dataclass(frozen=True)
class Case:
  module: str
  config: str
  overrides: tuple[str, ...]
  steps: tuple[str, ...]  # one command running these steps in order
  killed: tuple[str, ...]  # checkpoint folders (under the workdir) killed in turn, in training order


def _every(sections, **keys) -> tuple[str, ...]:
  return tuple(f"--config.{s}.{k}={v}" for s in sections for k, v in keys.items())


CASES = {
  "agile": Case(
    "agile.main",
    "agile/configs/quick.py:tiny",
    ("--config.limit=256", "--config.export.enabled=False", "--config.train.eval_every_epochs=0")
    + _every(("reference", "train"), epochs=2, checkpoint_every=CHECKPOINT_EVERY),
    ("train",),
    ("reference/checkpoints", "checkpoints"),
  ),
  "coinfer": Case(
    "coinfer.main",
    "coinfer/configs/quick.py:tiny",
    (f"--config.train.checkpoint_every={CHECKPOINT_EVERY}",)
    + _every(("init", "distill", "individual", "baselines"), epochs=4, max_steps=6),
    ("init", "cluster", "distill", "individual", "baselines"),
    # N4Q8 is the second setup model (N1Q1 is kept, then skipped); CLIO runs before SPINN (one fit)
    ("init", "distill_I-D-C", "individual/N4Q8", "spinn"),
  ),
  "subnets": Case(
    "subnets.main",
    "subnets/configs/quick.py:tiny",
    ("--config.finetune.max_steps=0", "--config.finetune.bn_epochs=1")
    + _every(("pretrain", "finetune"), epochs=1, checkpoint_every=CHECKPOINT_EVERY),
    ("importance", "knapsack", "finetune"),
    ("dense/checkpoints", "finetune/reds/checkpoints", "finetune/reds_bn/checkpoints"),
  ),
  "branching": Case(
    "branching.main",
    "branching/configs/quick.py:tiny",
    (
      "--config.train.num_epochs=2",
      "--config.train.batch_size=16",
      f"--config.train.checkpoint_every={CHECKPOINT_EVERY}",
    ),
    ("train",),
    ("stretched/checkpoints",),  # the original is kept, then skipped (one train_one)
  ),
  "offload": Case(
    "offload.main",
    "offload/configs/quick.py:tiny",
    (f"--config.metrics.classifiers.checkpoint_every={CHECKPOINT_EVERY}",),
    ("metrics",),
    ("strong/checkpoints",),  # the weak one is kept, then skipped; the DQN's own loop: test_offload_train.py
  ),
}

# result-JSON keys that hold timings, which differ between two equal runs (paths are made relative)
_UNSTABLE = re.compile(r"(time|second|_s$|per_s|_ms$|_us$|elapsed|wall|date)")


def _env(cache: Path, kill: str | None = None) -> dict[str, str]:
  env = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join([str(HOOK), str(REPO_ROOT)]),
    # the three runs of a stage compile the same programs once
    "JAX_COMPILATION_CACHE_DIR": str(cache),
    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    "JAX_PLATFORMS": "cpu",
  }
  env.pop("EDGEINFER_TEST_KILL", None)
  if kill:
    env["EDGEINFER_TEST_KILL"] = kill
  return env


def _run(case: Case, workdir: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
  cmd = [sys.executable, "-m", case.module, *case.steps, f"--config={case.config}", f"--workdir={workdir}"]
  return subprocess.run(
    [*cmd, *case.overrides], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600
  )


def _steps(directory: Path) -> list[int]:
  return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit()) if directory.is_dir() else []


def _last_checkpoint(directory: Path):
  step = max(_steps(directory))
  return step, ocp.StandardCheckpointer().restore((directory / str(step) / "default").absolute())


def _stable(tree):
  if isinstance(tree, dict):
    return {k: _stable(v) for k, v in tree.items() if not _UNSTABLE.search(k)}
  if isinstance(tree, list):
    return [_stable(v) for v in tree]
  return tree


def _results(workdir: Path) -> dict[str, object]:
  out = {}
  for p in sorted(workdir.rglob("*")):
    rel = str(p.relative_to(workdir))
    if p.suffix == ".npy":
      out[rel] = np.load(p)
    elif p.suffix == ".json" and p.name != "config.json":
      out[rel] = _stable(json.loads(p.read_text().replace(str(workdir), "WORKDIR")))
  return out


@pytest.mark.killresume
@pytest.mark.parametrize("name", sorted(CASES))
def test_every_stage_killed_between_checkpoints_resumes_bitwise(name, tmp_path):
  case = CASES[name]
  full, killed, cache = tmp_path / "full", tmp_path / "killed", tmp_path / "jax_cache"
  r = _run(case, full, _env(cache))
  assert r.returncode == 0, f"{name}: {r.stderr[-2000:]}"
  for stage in case.killed:
    r = _run(case, killed, _env(cache, f"{killed / stage}@{KILL_AT}"))
    assert r.returncode == -signal.SIGKILL, f"{name}: {stage} was not killed: {r.stderr[-2000:]}"
    left = _steps(killed / stage)
    assert left and max(left) == KILL_AT - CHECKPOINT_EVERY, f"{stage}: checkpoints {left} at the kill"
  r = _run(case, killed, _env(cache))
  assert r.returncode == 0, f"{name} (resumed): {r.stderr[-2000:]}"
  trained = case.killed

  # every checkpoint folder of the run (the killed stages and those that finished before a kill)
  folders = sorted(
    {str(p.parent.parent.relative_to(full)) for p in full.rglob("*/default") if p.parent.name.isdigit()}
  )
  assert set(trained) <= set(folders), (trained, folders)
  for stage in folders:
    step_a, tree_a = _last_checkpoint(full / stage)
    step_b, tree_b = _last_checkpoint(killed / stage)
    assert step_a == step_b, stage
    assert stage not in trained or step_a > KILL_AT, f"{stage}: the kill was not mid-way"
    leaves_a, leaves_b = jax.tree.leaves_with_path(tree_a), jax.tree.leaves_with_path(tree_b)
    assert [p for p, _ in leaves_a] == [p for p, _ in leaves_b], stage
    for (path, a), (_, b) in zip(leaves_a, leaves_b, strict=True):
      np.testing.assert_array_equal(a, b, err_msg=f"{stage} {jax.tree_util.keystr(path)}")

  results_a, results_b = _results(full), _results(killed)
  assert results_a.keys() == results_b.keys()
  for rel, a in results_a.items():
    if isinstance(a, np.ndarray):
      np.testing.assert_array_equal(a, results_b[rel], err_msg=rel)
    else:
      assert a == results_b[rel], rel
