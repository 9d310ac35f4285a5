"""Quick REDS run on digits (16x16, a small DS-CNN): every step and every baseline in about a minute.

  edgeinfer subnets export --config=subnets/configs/quick.py --workdir=runs/subnets_quick

Runtime: 15.5 min wall / 4.3 min CPU with every baseline on a shared, loaded 2-core CPU with
the original shared BN statistics and 12-epoch scratch baselines (the scratch baselines now train
18 epochs, the REDS total); the quickstart stage (REDS vs uniform only) took 4.8 min wall / 2.0 min
CPU there. Not re-timed since (stale).

Variants (`--config=subnets/configs/quick.py:VARIANT`):
  quickstart  the quickstart stage: REDS against uniform width scaling only (its 90 s budget)
  fast        the quickstart's smoke run (`--fast`): 2 + 1 + 1 epochs, 4 importance batches, float only
  tiny        the tests' run: 8x8 inputs, 200 examples, widths (6, 8, 8), a few steps, no baselines
"""

from common import config as config_lib
from subnets.configs import default

VARIANTS = ("quickstart", "fast", "tiny")


def get_config(arg=None):
  arg = config_lib.variant(arg, VARIANTS)
  c = default.get_config()
  c.data.image_size = 16
  c.model.preset = "custom"
  c.model.widths = (24, 32, 32, 48)
  c.model.dw_strides = (1, 2, 1)
  c.model.first_kernel = (3, 3)
  c.model.first_stride = (2, 2)
  c.pretrain.epochs = 12
  c.importance.num_batches = 20
  c.finetune.epochs = 5
  c.finetune.lr = 3e-3
  c.finetune.bn_epochs = 1
  c.export.representative_examples = 64
  c.export.latency_repeats = 200
  if arg in ("quickstart", "fast"):
    c.baselines.methods = ("uniform",)
  if arg == "fast":
    c.pretrain.epochs = 2
    c.importance.num_batches = 4
    c.finetune.epochs = 1
    c.finetune.bn_epochs = 1
    c.export.int8 = False
    c.export.latency_repeats = 20
  if arg == "tiny":
    c.data.image_size = 8
    c.data.limit = 200
    c.model.widths = (6, 8, 8)
    c.model.dw_strides = (2, 1)
    c.pretrain.update(epochs=1, batch_size=32)
    c.importance.num_batches = 3
    c.finetune.update(epochs=1, bn_epochs=1, batch_size=32, max_steps=2)
    c.baselines.methods = ()  # the baselines share the fine-tuning code path
    c.baselines.scratch_epochs = 1
  return c
