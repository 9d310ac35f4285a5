"""Quick RTCoInfer on digits for the quickstart: the small model (see small.py) with very few
epochs, individual models for 3 setups only (small.py trains all 50).

  python -m coinfer.main all --config coinfer/configs/quick.py --workdir runs/coinfer_quick

Runtime: a few minutes on 2 CPU cores (compilation dominates); accuracies are far from converged.
"""

from coinfer.configs import small


def get_config():
  c = small.get_config()
  c.init.epochs = 10
  c.cluster.steps = 2
  c.distill.epochs = 4
  c.ablations = ["I-D-C"]
  c.distill.calibrate_batches = 2
  c.individual.epochs = 4
  c.individual.subset = [[1, 1], [4, 4], [32, 8]]
  c.baselines.epochs = 1
  c.baselines.clio_widths = [1, 4, 32]
  c.baselines.spinn_thresholds = [0.5, 0.8, 0.95]
  c.stream.frames = 200
  c.stream.trace_seconds = 30.0
  c.export.parity_images = 60
  return c
