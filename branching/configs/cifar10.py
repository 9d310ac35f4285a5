"""Full pycls-style recipe on CIFAR-10 for users with a GPU (single-branch vs stretched).

    edgeinfer branching train --config=branching/configs/cifar10.py --workdir=runs/branching_cifar10 \
        --config.data.data_dir=/path/to/tfds

100 epochs, batch 128, SGD Nesterov lr 0.1 with cosine decay and 5 warmup
epochs, weight decay 5e-4, EMA of the weights (pycls EMA_ALPHA 1e-5 x period 32
at this batch size is about 0.9998 per step). Hours on one GPU; not run here.
"""

from branching.configs import quick
from common import config as config_lib


def get_config(arg: str | None = None):
  config_lib.variant(arg, ())
  c = quick.get_config()
  c.data.name = "cifar10"
  c.data.image_size = 32
  c.train.num_epochs = 100
  c.train.batch_size = 128
  c.train.base_lr = 0.1
  c.train.weight_decay = 5e-4
  c.train.warmup_epochs = 5
  c.train.ema_decay = 0.9998
  c.train.eval_every = 1000
  c.train.checkpoint_every = 1000
  c.run.image_size = 32
  return c
