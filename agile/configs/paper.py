"""The original AgileNN recipe (CIFAR-100 defaults of pittisl/AgileNN's main.py).

  edgeinfer agile all --config=agile/configs/paper.py --workdir=runs/agile_paper \
      --config.dataset=cifar100 --config.data_dir=$HOME/tensorflow_datasets

96x96 inputs (32x32 resized), feature extractor stride 3 -> 32x32x24, K = 5,
8 centroids, the full MobileNetV2 remote predictor, an EfficientNetV2-S-shaped
reference network trained here from scratch (no ImageNet weights can be
downloaded), SGDW lr 0.1 momentum 0.9 wd 5e-4 * lr, cosine over 200 epochs,
batch 64 (128 for cifar10), LAMBDA 0.8, RHO 0.8. A GPU job: days on a CPU.
Centroids start at the initial remote features' k-means centres (quick.py's default; see
agile/codebook.py); --config.train.centroid_init=normal gives the original's N(0, 0.05^2) logits.
For imagenet200 set input_size=128, model.fe_stride=2 and point to an
ImageFolder layout via --config.data_dir (see docs/agile.md).
"""

from __future__ import annotations

import ml_collections

from agile.configs import quick
from agile.models import PAPER_REMOTE_SETTINGS
from common import config as config_lib


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config_lib.variant(arg, ())
  c = quick.get_config()
  c.dataset = "cifar100"
  c.input_size = 96
  c.model.remote_settings = PAPER_REMOTE_SETTINGS
  c.model.remote_last_channels = 1280
  c.model.bn_momentum = 0.99
  c.reference.blocks = "effnetv2_s"
  c.reference.top_channels = 1280
  c.reference.epochs = 15
  c.reference.batch_size = 64
  c.reference.learning_rate = 1e-3
  c.train.epochs = 200
  c.train.lam = 0.8
  c.train.rho = 0.8
  c.train.channel_remapping = "none"
  c.train.batch_size = 64
  c.train.eval_every_epochs = 1
  c.export.calibration_images = 256
  c.export.parity_images = 1000
  return c
