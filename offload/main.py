"""Offloading command line: `edgeinfer offload <step> --config=offload/configs/quick.py --workdir=DIR`.

Steps: metrics (the digits classifier pair and its metrics files), train (the DQN by fitted
Q-iteration; resumes from the workdir's checkpoints), simulate (every policy on the test streams,
exports, report.md), all (those three), and the studies multicam (N cameras behind one switch)
and robust (policies fitted on shifted metrics), run by name. Each step skips when its outputs exist; `edgeinfer offload --help`
lists them. Knobs are config keys, e.g. --config.bucket.rates='(0.1,)' --config.bucket.depths='(4.0,)'
--config.stream.order=iid --config.dqn.learning_rate=1e-4 --config.dqn.iterations=4000
--config.metrics.source=npz --config.metrics.file=data/ofa_top5.npz (docs/offload.md has the table).
"""

from __future__ import annotations

from common import app
from offload import pipeline

APP = app.App(
  "offload",
  pipeline.STEPS,
  default_config="offload/configs/quick.py",
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
