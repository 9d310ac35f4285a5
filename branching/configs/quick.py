"""Quick config: a small bottleneck ResNet on `digits`, single-branch vs stretched (CPU + DSP).

    edgeinfer branching train --config=branching/configs/quick.py --workdir=runs/branching_quick
    edgeinfer branching run --config=branching/configs/quick.py --workdir=runs/branching_quick

Trains R-tiny-C and R-tiny-CD (32 px) for 6 epochs each with the pycls recipe
(SGD Nesterov, cosine, weight EMA): about 40 s on 2 CPU cores; then searches
R-50 on CPU+DSP, exports tagged TFLite and per-branch subgraphs and measures
branch-parallel execution on 2 threads.

Variants (`--config=branching/configs/quick.py:VARIANT`):
  quickstart  the quickstart stage: 4 epochs, 3 host-calibration models, no leave-one-model-out refits
  fast        the quickstart's --fast stage: 1 epoch on 256 images, 10 timing repeats, 2 calibration models
  tiny        the tests: 1 epoch on 96 images, batch 32
"""

import ml_collections

from common import config as config_lib

VARIANTS = ("quickstart", "fast", "tiny")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = config_lib.variant(arg, VARIANTS)
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.original = "tiny/R-tiny-C.yaml"  # under branching/configs/, or any path
  c.stretched = "tiny/R-tiny-CD.yaml"
  c.data = ml_collections.ConfigDict({"name": "digits", "data_dir": "", "image_size": 32, "limit": 0})
  c.train = ml_collections.ConfigDict(
    {
      "num_epochs": 6,
      "batch_size": 64,
      "base_lr": 0.1,
      "momentum": 0.9,
      "weight_decay": 5e-5,
      "warmup_epochs": 0,
      "ema_decay": 0.98,
      "eval_every": 0,
      "checkpoint_every": 100,  # steps between checkpoints (a killed run resumes there); 0 = end only
      "show_progress": True,
    }
  )
  # Search: a published single-branch original, processors, constraints (digest §2.2). The `count`,
  # `search` and `calibrate` steps read these too; --network, --processors, ... override them there.
  c.search = ml_collections.ConfigDict(
    {
      "model": "published/mi/R-50-C.yaml",
      "processors": ("cpu", "dsp"),
      "alpha": 0.4,
      "beta": 0.8,
      "gamma": 0.8,
      "image_size": 224,
      "phone": "mi",
    }
  )
  # Measured runs on this machine: host-CPU calibration and branch-parallel timing.
  c.run = ml_collections.ConfigDict(
    {
      "image_size": 32,  # input size of the timed models (the trained ones run at data.image_size)
      "threads": 2,
      "repeats": 50,
      "calibration_models": 4,  # LiteRT models measured to fit the `host` processor
      "lomo": True,  # the cost model's leave-one-model-out check in report.md (6 refits)
    }
  )
  if arg == "quickstart":
    c.train.num_epochs = 4
    c.run.calibration_models = 3
    c.run.lomo = False  # left to `edgeinfer branching calibrate` and the benchmark
  elif arg == "fast":
    c.train.num_epochs = 1
    c.train.show_progress = False
    c.data.limit = 256
    c.run.repeats = 10
    c.run.calibration_models = 2
    c.run.lomo = False
  elif arg == "tiny":
    c.train.num_epochs = 1
    c.train.batch_size = 32
    c.train.show_progress = False
    c.data.limit = 96
    c.run.repeats = 3
    c.run.calibration_models = 2
    c.run.lomo = False
  return c
