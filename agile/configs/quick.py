"""AgileNN on the embedded digits, small enough for 2 CPU cores.

  edgeinfer agile all --config=agile/configs/quick.py --workdir=runs/agile

Digits (32x32) are resized to 24x24; the feature extractor's stride 3 gives an
8x8x24 feature map; K = 5 local channels, 19 quantised to 3 bits. The
reference network is the small EfficientNetV2-style config. About 1-2 minutes on
a quiet 2-core machine (reference ~20 s, AgileNN ~40 s, export ~30 s).

Variants (`--config=agile/configs/quick.py:VARIANT`):
  quickstart  the quickstart stage: 8 reference epochs, 10 AgileNN epochs
  fast        the quickstart's smoke run (`--fast`): 256 examples, one epoch each, 64 parity images
  smoke       the short digits run of the tests: 320 examples, 2 + 6 epochs, the hinge active throughout
  tiny        the unit tests' model: 6 feature channels (K = 3), 4 centroids, one remote row, a
              one-block reference network
"""

from __future__ import annotations

import ml_collections

from common import config as config_lib
from common.serving import runner

VARIANTS = ("quickstart", "fast", "smoke", "tiny")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = config_lib.variant(arg, VARIANTS)
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.dataset = "digits"
  c.data_dir = ""
  c.limit = 0  # 0 = all examples
  c.input_size = 24

  c.model = ml_collections.ConfigDict()
  c.model.feature_channels = 24
  c.model.fe_stride = 3
  c.model.split_ratio = 0.2
  c.model.num_centroids = 8
  c.model.remote_settings = ((1, 16, 1, 1), (6, 24, 1, 2), (6, 32, 1, 2))
  c.model.remote_last_channels = 128
  c.model.remote_stem_channels = 16
  c.model.temperature = 1.0
  c.model.quantizer_backward = "soft"
  c.model.bn_momentum = 0.9

  c.reference = ml_collections.ConfigDict()
  c.reference.blocks = "small"
  c.reference.top_channels = 128
  c.reference.dropout = 0.5
  c.reference.bn_momentum = 0.9
  c.reference.epochs = 15
  c.reference.batch_size = 64
  c.reference.learning_rate = 3e-3
  c.reference.checkpoint_every = 100  # steps between checkpoints (a killed run resumes there); 0 = end only
  c.reference.path = ""  # "" = train into workdir/reference/variables

  c.train = ml_collections.ConfigDict()
  c.train.epochs = 25
  c.train.checkpoint_every = 100  # steps between checkpoints; 0 = only at the end
  c.train.batch_size = 64
  c.train.eval_batch_size = 256
  c.train.learning_rate = 0.1
  c.train.momentum = 0.9
  c.train.weight_decay = 5e-4
  c.train.rho = 0.8
  c.train.lam = 0.4  # chosen from runs at 0.8 / 0.5 / 0.4 / 0.3 on digits: see docs/agile.md
  c.train.ig_steps = 2
  c.train.ig_baseline_table = True  # the alpha = 0 IG gradient looked up per class (exact; see reference.py)
  c.train.eval_every_epochs = 5
  c.train.channel_remapping = "global_importance"
  # "kmeans": centroids at the initial remote features' 1-D k-means centres (agile/codebook.py says
  # why); "normal": the original's q ~ N(0, 0.05^2), all centroids near 3
  c.train.centroid_init = "kmeans"
  c.train.max_steps = 0  # 0 = all epochs

  c.latency = ml_collections.ConfigDict()
  c.latency.device_clock_hz = 216e6
  c.latency.device_macs_per_cycle = 0.5
  c.latency.link_bps = 1e6
  c.latency.server_macs_per_s = 1e12
  c.latency.rtt_s = 0.0

  c.export = ml_collections.ConfigDict()
  c.export.enabled = True
  c.export.calibration_images = 64
  c.export.parity_images = 0  # 0 = the whole test set
  # RAM of the target MCU, the most tensor arena TFLite Micro gets: STM32F746 (320 KB SRAM)
  c.export.target_ram_bytes = 320 * 1024
  c.deploy = runner.config_section(fps=10.0, deadline=0.5)  # the deploy and device steps

  if arg in ("quickstart", "fast", "smoke"):
    c.reference.epochs = 8
    c.train.epochs = 10
    c.train.eval_every_epochs = 5
    c.export.parity_images = 0
  if arg in ("fast", "smoke"):
    c.limit = 256
    c.reference.epochs = 1
    c.train.epochs = 1
    c.train.eval_every_epochs = 0
    c.export.calibration_images = 16
    c.export.parity_images = 64
  if arg == "smoke":
    c.limit = 320
    c.reference.epochs = 2
    c.train.epochs = 6
    c.train.lam = 0.2
    c.train.rho = 1.0  # the hinge stays active for the whole short run
    c.train.channel_remapping = "none"
    c.export.parity_images = 0  # the whole (limited) test set
  if arg == "tiny":
    c.input_size = 8
    c.model.update(feature_channels=6, fe_stride=1, split_ratio=0.5, num_centroids=4, remote_settings=((1, 4, 1, 1),),
                   remote_last_channels=8, remote_stem_channels=4, bn_momentum=0.99)  # fmt: skip
    c.reference.update(blocks="tiny", top_channels=8, dropout=0.0)
  return c
