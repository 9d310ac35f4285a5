"""Quick RTCoInfer on digits for CPU: 16x16 images, a slim MobileNetV2, a few epochs,
individual models for a representative subset of 6 setups (not all 50: see default.py).

  python -m coinfer.main all --config coinfer/configs/quick.py --workdir runs/coinfer_quick

Runtime: about a minute on 2 quiet CPU cores.
"""

from coinfer.configs import default


def get_config():
  c = default.get_config()
  c.data.image_size = 16
  c.model.width_mult = 0.25
  c.model.settings = [[4, 24, 1, 2], [4, 32, 1, 2], [4, 64, 1, 2]]
  c.model.last_channels = 128
  c.init.epochs = 8
  c.cluster.steps = 4
  c.distill.epochs = 6
  c.distill.calibrate_batches = 4
  c.ablations = ["I-D-C"]
  c.individual.epochs = 6
  c.individual.subset = [[1, 1], [1, 4], [2, 2], [4, 4], [8, 1], [32, 8]]
  c.baselines.epochs = 6
  c.baselines.clio_widths = [1, 2, 4, 8, 32]
  c.stream.frames = 300
  c.stream.trace_seconds = 60.0
  c.export.setups = [[1, 1], [4, 4], [32, 8]]
  c.export.parity_images = 100
  return c
