"""python -m agile.main --config agile/configs/quick.py --workdir runs/agile [--config.train.epochs=5]"""

from __future__ import annotations

import json

from absl import app, flags
from ml_collections import config_flags

from common.cli import run_main

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "agile/configs/quick.py", "AgileNN config file.", lock_config=True)
flags.DEFINE_string(
  "workdir", "runs/agile", "Run directory (checkpoints, exports, report.md); reruns resume."
)
flags.DEFINE_string("data_dir", None, "TFDS data directory, or the ImageFolder root for imagenet200.")


def main(argv):
  del argv
  config = FLAGS.config
  if FLAGS.data_dir:
    with config.unlocked():
      config.data_dir = FLAGS.data_dir

  def go():
    from agile import train

    metrics = train.train_and_evaluate(config, FLAGS.workdir)
    keys = ("accuracy", "local_accuracy", "remote_accuracy", "reference_accuracy", "skewness")
    print(json.dumps({k: metrics[k] for k in keys}, indent=2))
    print(f"report: {FLAGS.workdir}/report.md")

  run_main(go)


if __name__ == "__main__":
  app.run(main)
