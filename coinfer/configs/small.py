"""Small RTCoInfer on digits for CPU (the run whose figures docs/coinfer.md reports): 16x16
images, a slim MobileNetV2 (width 0.25, rows (2,24,1,2),(2,32,1,2), last 64), init 6 epochs,
distillation 4, individual models for 6 representative setups (4 epochs each, from the init).

  python -m coinfer.main all --config coinfer/configs/small.py --workdir runs/coinfer_small

Runtime: about 25 minutes on 2 busy CPU cores.
"""

from coinfer.configs import default


def get_config():
  c = default.get_config()
  c.data.image_size = 16
  c.model.width_mult = 0.25
  c.model.settings = [[2, 24, 1, 2], [2, 32, 1, 2]]
  c.model.last_channels = 64
  c.init.epochs = 6
  c.init.lr = 5e-3
  c.cluster.steps = 3
  c.distill.epochs = 4
  c.distill.calibrate_batches = 3
  c.ablations = ["I-D-C"]
  c.individual.epochs = 4
  c.individual.subset = [[1, 1], [1, 4], [2, 2], [4, 4], [8, 1], [32, 8]]
  c.baselines.epochs = 3
  c.baselines.clio_widths = [1, 2, 4, 8, 32]
  c.stream.frames = 300
  c.stream.trace_seconds = 60.0
  c.export.setups = [[1, 1], [4, 4], [32, 8]]
  c.export.parity_images = 100
  return c
