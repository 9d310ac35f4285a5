"""`python -m launch.deploy <technique> [FLAGS]` is `edgeinfer <technique> deploy [FLAGS]`.

  python -m launch.deploy coinfer --config=coinfer/configs/quick.py --workdir=runs/quickstart/coinfer \
      --config.deploy.link=tc

The deploy step of a technique's app (`common.serving.runner`): a server process on the run's model
repository, a device process, the link between them, and RUN/deploy/report.md beside the
simulator's prediction. Flags as every step's: `--config`, `--workdir`, `--config.deploy.KEY=VALUE`.
"""

from __future__ import annotations

import sys

from launch.edgeinfer import step_alias

if __name__ == "__main__":
  step_alias("deploy", sys.argv[1:])
