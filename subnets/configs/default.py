"""REDS with the vision DS-CNN-S on digits (32x32): dense training, |W*G| over 100 batches,
nested knapsack at 25/50/75 %, joint fine-tuning, every baseline, export.

  edgeinfer subnets export --config=subnets/configs/default.py --workdir=runs/subnets_default

Runtime: roughly 20-30 minutes on 2 CPU cores (the four joint fine-tunings and three
scratch trainings dominate). Other data: --config.data.name=cifar10 (TFDS, prepared) or
speech_commands with --config.model.preset=ds_cnn_s (49x10 MFCC inputs).
"""

import ml_collections

from common import config as config_lib


def get_config(arg=None) -> ml_collections.ConfigDict:
  config_lib.variant(arg, ())
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.data = dict(name="digits", data_dir="", image_size=32, limit=0)
  # preset: dnn_s, dnn_l, cnn_s, cnn_l, ds_cnn_s, ds_cnn_l, ds_cnn_s_vision, mobilenet_v1, custom.
  # Non-empty widths / dw_strides / first_kernel / first_stride / activation override the preset.
  c.model = dict(
    preset="ds_cnn_s_vision",
    widths=(),
    dw_strides=(),
    first_kernel=(),
    first_stride=(),
    activation="",
    alpha=0.25,
  )
  c.pretrain = dict(epochs=40, lr=3e-3, batch_size=64, augment=True, max_steps=0, checkpoint_every=100)
  c.importance = dict(num_batches=100)
  c.knapsack = dict(budgets=(0.25, 0.5, 0.75), min_width=1, granularity=1, time_limit=60.0, peak_bytes=0.0)
  # bn_stats: "per_subnet" (batch statistics while fine-tuning, then each subnetwork's own statistics over
  # bn_batches training batches) or "shared" (the original: the dense statistics, frozen and prefix-sliced).
  # loss_weights: "sqrt_params" (the original's pi_k ~ sqrt of the parameter fraction) or "equal".
  c.finetune = dict(epochs=20, lr=1e-3, batch_size=64, augment=True, bn_epochs=3, bn_lr=5e-4, max_steps=0, checkpoint_every=100,
                    bn_stats="per_subnet", bn_batches=20, loss_weights="sqrt_params")  # fmt: skip
  # scratch_epochs: 0 = the REDS total (pretrain + finetune + BN-stage epochs).
  c.baselines = dict(methods=("uniform", "magnitude", "random", "scratch"), scratch_epochs=0)
  # target_ram_bytes: RAM of the target MCU, the most tensor arena TFLite Micro gets per int8
  # subnetwork: an Arduino Nano 33 BLE Sense (nRF52840, 256 KB SRAM), a board REDS ran on
  c.export = dict(int8=True, representative_examples=128, latency_repeats=300, target_ram_bytes=256 * 1024)
  return c
