"""Small RTCoInfer on digits for CPU (the run whose figures docs/coinfer.md reports): 16x16
images, a slim MobileNetV2 (width 0.25, rows (2,24,1,2),(2,32,1,2), last 64); initialization
30 epochs, clustering one epoch of gradients (as the original), the SW-CNN 180 epochs (5 setups
a step) under the four ablations that keep C, and an individually trained model for every one
of the 50 setups (60 epochs each, from the init): the SW-CNN's training costs 900 setup-epochs,
the 50 individual models 3000.

  edgeinfer coinfer all --config=coinfer/configs/small.py --workdir=runs/coinfer_small

Runtime on 2 quiet CPU cores: init 25 s, cluster 20 s, each ablation 4-6 minutes, the 50
individual models 16 minutes, baselines 80 s, the rest under a minute.

The ablations separate better at a third of the budget; docs/coinfer.md's second table is

  edgeinfer coinfer distill --ablation=NAME --config.distill.epochs=60 ...

for NAME in I-D-C noI-D-C I-noD-C noI-noD-C I-D-noC, in a workdir holding the same init,
clusters and individual models (I-D-noC trains 52 setups a step: about 15 minutes at 60).
"""

from coinfer.configs import default
from common.config import variant


def get_config(arg=None):
  variant(arg, ())
  c = default.get_config()
  c.data.image_size = 16
  c.model.width_mult = 0.25
  c.model.settings = [[2, 24, 1, 2], [2, 32, 1, 2]]
  c.model.last_channels = 64
  c.init.epochs = 30
  c.init.lr = 5e-3
  c.cluster.steps = 22
  c.distill.epochs = 180
  c.distill.calibrate_batches = 8
  c.ablations = ["I-D-C", "noI-D-C", "I-noD-C", "noI-noD-C"]
  c.individual.epochs = 60
  c.individual.subset = []
  c.baselines.epochs = 30
  c.baselines.clio_widths = [1, 2, 4, 8, 32]
  c.stream.frames = 300
  c.stream.trace_seconds = 60.0
  c.export.setups = [[1, 1], [4, 4], [32, 8]]
  c.export.parity_images = 100
  return c
