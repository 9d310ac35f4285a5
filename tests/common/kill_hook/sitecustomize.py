"""Test-only: kills this process with SIGKILL when a training is about to save a chosen checkpoint.

`tests/common/test_common_kill_resume.py` puts this folder on PYTHONPATH of the runs it kills and sets
EDGEINFER_TEST_KILL=<checkpoint directory>@<step>. When `common.checkpoint.save` is called for that
directory and step, the process kills itself before writing it: the steps since the previous
checkpoint are lost, as in a kill at any moment between two checkpoints.
"""

import os

_target = os.environ.get("EDGEINFER_TEST_KILL")
if _target:
  import signal
  from pathlib import Path

  from common import checkpoint as _ckpt

  _dir, _, _step = _target.rpartition("@")
  _save = _ckpt.save

  def _save_or_die(manager, step, tree, **kwargs):
    if int(step) == int(_step) and Path(str(manager.directory)).resolve() == Path(_dir).resolve():
      os.kill(os.getpid(), signal.SIGKILL)
    return _save(manager, step, tree, **kwargs)

  _ckpt.save = _save_or_die
