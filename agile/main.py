"""AgileNN command line: `edgeinfer agile <step> --config=agile/configs/quick.py --workdir=DIR`.

Each step runs the steps before it when their outputs are missing from the workdir (so `export`
alone runs everything) and rewrites workdir/report.md; `all` runs train, evaluate and export.
TFDS data (or the ImageFolder root of imagenet200) is read from `--config.data_dir=DIR`.
`edgeinfer agile --help` lists the steps.
"""

from __future__ import annotations

from agile import pipeline
from common import app

APP = app.App(
  "agile",
  pipeline.STEPS,
  default_config="agile/configs/quick.py",
  validate=pipeline.validate,
  preflight=pipeline.preflight,
  context=pipeline.Run,
  all_steps=pipeline.ALL,
  doc=__doc__.splitlines()[0],
)


def main(argv=None) -> None:
  app.run(APP, argv)


if __name__ == "__main__":
  main()
