"""A training run killed with SIGKILL after a checkpoint, then restarted, ends where an
uninterrupted run with the same seed ends."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import orbax.checkpoint as ocp

from tests.conftest import REPO_ROOT

ARGS = [
  "--only=common",
  "--config.export.enabled=False",
  "--config.model.widths=(8,16)",
  "--config.train.num_epochs=8",
  "--config.train.batch_size=32",
  "--config.train.checkpoint_every=8",
  "--config.train.eval_every=0",
  "--config.train.keep=50",
]
TOTAL_STEPS = 8 * (1437 // 32)


def _cmd(workdir: Path) -> list[str]:
  return [sys.executable, "-m", "launch.quickstart", f"--workdir={workdir}", *ARGS]


def _steps(ckpt_dir: Path) -> list[int]:
  if not ckpt_dir.exists():
    return []
  return sorted(int(p.name) for p in ckpt_dir.iterdir() if p.name.isdigit())


def _final_params(workdir: Path):
  ckpt_dir = workdir / "common" / "checkpoints"
  step = max(_steps(ckpt_dir))
  tree = ocp.StandardCheckpointer().restore((ckpt_dir / str(step) / "default").absolute())
  return step, tree["params"]


def test_killed_run_resumes_to_the_same_parameters(tmp_path):
  env = {**os.environ, "PYTHONUNBUFFERED": "1"}
  full, killed = tmp_path / "full", tmp_path / "killed"
  subprocess.run(_cmd(full), cwd=REPO_ROOT, env=env, check=True, capture_output=True)

  proc = subprocess.Popen(
    _cmd(killed), cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
  )
  ckpt_dir = killed / "common" / "checkpoints"
  deadline = time.time() + 120
  while time.time() < deadline and not [s for s in _steps(ckpt_dir) if s >= 16]:
    time.sleep(0.02)
  os.kill(proc.pid, signal.SIGKILL)
  proc.wait()
  steps_at_kill = _steps(ckpt_dir)
  assert steps_at_kill and max(steps_at_kill) < TOTAL_STEPS, f"not interrupted mid-run: {steps_at_kill}"

  subprocess.run(_cmd(killed), cwd=REPO_ROOT, env=env, check=True, capture_output=True)
  step_a, params_a = _final_params(full)
  step_b, params_b = _final_params(killed)
  assert step_a == step_b == TOTAL_STEPS
  for a, b in zip(
    __import__("jax").tree.leaves(params_a), __import__("jax").tree.leaves(params_b), strict=True
  ):
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
