"""RTCoInfer command line: `edgeinfer coinfer <step> --config=coinfer/configs/quick.py --workdir=DIR`.

Every step reads what the steps before it wrote into the workdir, skips when its own outputs
exist and resumes its training from checkpoints; `all` runs every step in order. `distill
--ablation=NAME` trains one ablation instead of `config.ablations`. `edgeinfer coinfer --help`
lists the steps.
"""

from __future__ import annotations

from absl import flags

from coinfer import pipeline
from common import app

_ABLATION = flags.DEFINE_string(
  "ablation",
  None,
  "distill: train this ablation (I-D-C, noI-D-C, I-noD-C, I-D-noC, ...) instead of config.ablations",
)


def _preflight(config, workdir) -> None:
  if _ABLATION.value:  # a bad --ablation is refused before anything is written
    pipeline.parse_ablation(_ABLATION.value, key="--ablation")
  pipeline.preflight(config, workdir)


def _context(config, workdir) -> pipeline.Run:
  return pipeline.Run.build(config, workdir, _ABLATION.value)


APP = app.App(
  "coinfer",
  pipeline.STEPS,
  default_config="coinfer/configs/quick.py",
  validate=pipeline.validate,
  preflight=_preflight,
  context=_context,
  all_steps=pipeline.TRAINING,
  doc=__doc__.splitlines()[0],
)


def main(argv=None) -> None:
  app.run(APP, argv)


if __name__ == "__main__":
  main()
