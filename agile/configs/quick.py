"""AgileNN on the embedded digits, small enough for 2 CPU cores.

  python -m agile.main --config agile/configs/quick.py --workdir runs/agile

Digits (32x32) are resized to 48x48; the feature extractor's stride 3 gives a
16x16x24 feature map; K = 5 local channels, 19 quantised to 3 bits. The
reference network is the small EfficientNetV2-style config. About 1-2 minutes on
a quiet 2-core machine (reference ~20 s, AgileNN ~40 s, export ~30 s).
"""

from __future__ import annotations

import ml_collections


def get_config() -> ml_collections.ConfigDict:
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
  c.reference.path = ""  # "" = train into workdir/reference/variables

  c.train = ml_collections.ConfigDict()
  c.train.epochs = 25
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
  return c
