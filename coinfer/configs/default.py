"""RTCoInfer on digits, full setup grid (50 setups), every setup trained individually.

  edgeinfer coinfer all --config=coinfer/configs/default.py --workdir=runs/coinfer_default

Runtime: tens of minutes on 2 CPU cores (the 50 individual models, trained one after another,
dominate).
"""

import ml_collections

from common.config import variant
from common.serving import runner


def get_config(arg=None) -> ml_collections.ConfigDict:
  variant(arg, ())
  # sequences are tuples, so that --config.KEY="(...)" can set them (lists assigned later become tuples)
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.data = dict(name="digits", data_dir="", image_size=32, limit=ml_collections.config_dict.placeholder(int))
  c.setups = dict(
    channels=(1, 2, 3, 4, 5, 6, 7, 8, 16, 32),
    bits=(1, 2, 4, 8, 16),
    train_bits=(1, 2, 4, 8, 16),
  )
  c.model = dict(
    width_mult=0.5,
    settings=((6, 24, 2, 2), (6, 32, 2, 2), (6, 64, 2, 2), (6, 96, 1, 1)),
    last_channels=256,
    stride_cap=2,
    per_sample_quant=True,
  )
  c.train = dict(
    batch_size=64, optimizer="adam", weight_decay=1e-4, augment=True, log_every=10, checkpoint_every=100
  )  # steps between checkpoints of every stage; 0 = only at the end
  c.init = dict(epochs=30, lr=3e-3, max_steps=0)
  c.cluster = dict(steps=20, num_clusters=3)
  c.distill = dict(epochs=30, lr=1e-3, max_steps=0, calibrate_batches=8)
  c.ablations = ("I-D-C", "noI-D-C", "I-noD-C", "I-D-noC")
  c.individual = dict(epochs=30, lr=1e-3, max_steps=0, from_init=True, subset=())
  c.baselines = dict(
    epochs=30,
    lr=3e-3,
    max_steps=0,
    clio_widths=(1, 2, 4, 8, 16, 32),
    clio_from_init=True,  # the reference starts CLIO from initialization_model.pt
    spinn_exit_weight=0.15,
    spinn_thresholds=(0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.99),
  )
  c.stream = dict(
    image_shape=(224, 224, 3),
    fps=10.0,
    deadline_s=0.2,
    horizon=5,
    frames=600,
    history=5,
    device_macs_per_s=2e9,
    server_macs_per_s=2e11,
    margin=True,
    method="dp",  # the Pareto DP: the MILP's optimum (docs/coinfer.md) in about 0.1 ms, not 3-25 ms
    traces=("markov", "random_walk", "step"),
    trace_seconds=120.0,
    trace_files=(),
  )
  # target_ram_bytes: RAM of the camera-side MCU, the most tensor arena TFLite Micro gets for the
  # int8 device part (an STM32F746-class Cortex-M7: 320 KB SRAM)
  c.export = dict(setups=((1, 1), (4, 4), (32, 8)), int8=True, parity_images=200, target_ram_bytes=320 * 1024)
  # the deploy and device steps (common.serving.runner): fps and deadline default to stream.*
  c.deploy = runner.config_section(controller="mpc")  # mpc | rate | buffer | fixed:<setup>
  return c
