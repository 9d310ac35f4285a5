"""REDS command line: `edgeinfer subnets <step> --config=subnets/configs/quick.py --workdir=DIR`.

Each step runs the steps before it when their outputs are missing from the workdir (so `export`
alone runs everything) and rewrites workdir/report.md. `edgeinfer subnets --help` lists the steps.
"""

from __future__ import annotations

from common import app
from subnets import pipeline

APP = app.App(
  "subnets",
  pipeline.STEPS,
  default_config="subnets/configs/quick.py",
  validate=pipeline.validate,
  preflight=pipeline.preflight,
  context=pipeline.Run,
  doc=__doc__.splitlines()[0],
)


def main(argv=None) -> None:
  app.run(APP, argv)


if __name__ == "__main__":
  main()
