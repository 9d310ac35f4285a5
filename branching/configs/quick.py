"""Quick config: a small bottleneck ResNet on `digits`, single-branch vs stretched (CPU + DSP).

    python -m branching.main train --config branching/configs/quick.py --workdir runs/branching_quick
    python -m branching.main run --config branching/configs/quick.py --workdir runs/branching_quick

Trains R-tiny-C and R-tiny-CD (32 px) for 6 epochs each with the pycls recipe
(SGD Nesterov, cosine, weight EMA): about 40 s on 2 CPU cores; then searches
R-50 on CPU+DSP, exports tagged TFLite and per-branch subgraphs and measures
branch-parallel execution on 2 threads.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
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
      "checkpoint_every": 0,
    }
  )
  # Search: a published single-branch original, processors, constraints (digest §2.2).
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
    }
  )
  c.lock()
  return c
