"""`python -m launch.device <technique> [FLAGS]` is `edgeinfer <technique> device [FLAGS]`.

  python -m launch.device coinfer --config=coinfer/configs/quick.py --workdir=runs/quickstart/coinfer \
      --config.deploy.server=HOST:PORT

The device step of a technique's app (`common.serving.runner`): the run's device part streams
against a server that is already running (`edgeinfer serve --repository=RUN/exports/repository`),
over the pacer or the network as it is (`--config.deploy.link=pacer|none`); RUN/deploy/device.json.
"""

from __future__ import annotations

import sys

from launch.edgeinfer import step_alias

if __name__ == "__main__":
  step_alias("device", sys.argv[1:])
