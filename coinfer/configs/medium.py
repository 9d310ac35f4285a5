"""Medium RTCoInfer on digits for a shared CPU: the small model trained longer, individual models
for 8 setups spanning the residual-rate range (the accuracy-loss figures in docs/coinfer.md).

  edgeinfer coinfer all --config=coinfer/configs/medium.py --workdir=runs/coinfer_medium

Runtime: about 45 minutes on 2 busy CPU cores.
"""

from coinfer.configs import small
from common.config import variant


def get_config(arg=None):
  variant(arg, ())
  c = small.get_config()
  c.init.epochs = 20
  c.cluster.steps = 10
  c.distill.epochs = 10
  c.distill.calibrate_batches = 8
  c.individual.epochs = 10
  c.individual.subset = [[1, 1], [1, 2], [2, 2], [3, 4], [4, 4], [8, 1], [16, 8], [32, 8]]
  c.baselines.epochs = 10
  c.stream.frames = 600
  c.stream.trace_seconds = 120.0
  return c
