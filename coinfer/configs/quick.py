"""Quick RTCoInfer on digits for the quickstart: the small model (see small.py) with very few
epochs, individual models for 3 setups only (small.py trains all 50).

  edgeinfer coinfer all --config=coinfer/configs/quick.py --workdir=runs/coinfer_quick

Runtime: a few minutes on 2 CPU cores (compilation dominates); accuracies are far from converged.

Variants (`--config=coinfer/configs/quick.py:VARIANT`):
  fast: 8x8 images, 9 setups, 3 steps per training, float and int8 exports (the quickstart's
        --fast stage and the pipeline and deploy tests)
  tiny: the same model on 64 images, 2 steps per training (the unit tests' context)
"""

from coinfer.configs import small
from common.config import variant


def get_config(arg=None):
  arg = variant(arg, ("fast", "tiny"))
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
  c.deploy.trace_scale = 0.05  # the small payloads (0.1-2.4 kB): a Markov trace of 0.06-0.6 Mbit/s
  c.deploy.fps = 10.0
  if arg in ("fast", "tiny"):
    # steps per training, images, batch, frames per trace
    steps, limit, batch, frames = {"fast": (3, 128, 32, 60), "tiny": (2, 64, 16, 40)}[arg]
    c.data.image_size = 8
    c.setups.channels = [1, 2, 4]
    c.setups.bits = [1, 2, 8]
    c.setups.train_bits = [1, 2, 8]
    c.model.settings = [[2, 16, 1, 2]]
    c.model.last_channels = 32
    for s in ("init", "distill", "individual", "baselines"):
      c[s].epochs, c[s].max_steps = 1, steps
    c.cluster.steps = 1
    c.cluster.num_clusters = 2
    c.distill.calibrate_batches = 1
    c.individual.subset = [[1, 1], [4, 8]]
    c.baselines.clio_widths = [1, 4]
    c.export.setups = [[1, 1], [2, 2], [4, 8]]
    c.export.int8 = True  # the deploy tests run the int8 device parts
    c.export.parity_images = 40
    c.data.limit, c.train.batch_size = limit, batch
    c.stream.frames, c.stream.trace_seconds = frames, 10.0
    c.deploy.frames, c.deploy.fps = 60, 20.0
  return c
