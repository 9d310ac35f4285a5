"""Quick REDS run on digits (16x16, a small DS-CNN): every step and every baseline in about a minute.

  python -m subnets.main export --config subnets/configs/quick.py --workdir runs/subnets_quick

Runtime: 15.5 min wall / 4.3 min CPU with every baseline on a shared, loaded 2-core CPU with
the original shared BN statistics and 12-epoch scratch baselines (the scratch baselines now train
18 epochs, the REDS total); the quickstart stage (REDS vs uniform only) took 4.8 min wall / 2.0 min
CPU there. Not re-timed since (stale).
"""

from subnets.configs import default


def get_config():
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
  return c
