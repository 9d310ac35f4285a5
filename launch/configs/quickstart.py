"""Quickstart config: a small CNN on the embedded `digits` data, trained, exported, checked.

Run:  python -m launch.quickstart                       (all stages; goal < 10 min on 2 quiet cores)
      python -m launch.quickstart --only common         (this stage alone, ~40 s)
      python -m launch.quickstart --config.train.num_epochs=2
"""

import ml_collections

from common import config as config_lib


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The common stage's config; `fast` (what `--fast` runs) trains 2 epochs."""
  arg = config_lib.variant(arg, ("fast",))
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.data = ml_collections.ConfigDict({"name": "digits", "data_dir": "", "image_size": 32, "limit": 0})
  c.model = ml_collections.ConfigDict({"widths": (16, 32, 64), "num_classes": 10})
  c.train = ml_collections.ConfigDict(
    {
      "num_epochs": 2 if arg == "fast" else 12,
      "batch_size": 64,
      "learning_rate": 1e-2,
      "eval_every": 60,
      "checkpoint_every": 60,
      "keep": 2,
    }
  )
  # target_ram_bytes: RAM of the target MCU, the most tensor arena TFLite Micro gets for the int8
  # model (an STM32F746-class Cortex-M7: 320 KB SRAM)
  c.export = ml_collections.ConfigDict(
    {"enabled": True, "int8": True, "representative_examples": 256, "target_ram_bytes": 320 * 1024}
  )
  return c
