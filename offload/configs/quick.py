"""Quick config: metrics from a tiny vs a larger CNN on `digits`, a short DQN run, all policies simulated.

Run:  edgeinfer offload all --config=offload/configs/quick.py --workdir=runs/offload_quick
Variants: `quick.py:fast` (the quickstart's smoke run: 10 Q-iterations, 4 x 2k streams, no int8),
`quick.py:tiny` (the tests: `fast` continued to 12 Q-iterations with a metrics row each),
`quick.py:deploy` (the deploy test: 1 classifier epoch, an untrained DQN, 2 x 1k streams).
Runtime: about 65 s of CPU on 2 cores for train + simulate with exports.
"""

from common import config as cfg_lib
from offload.configs import default


def get_config(arg: str | None = None):
  arg = cfg_lib.variant(arg, ("fast", "tiny", "deploy"))
  c = default.get_config()
  c.metrics.classifiers.num_epochs = 8
  c.dqn.history_metrics = 15
  c.dqn.iterations = 150
  c.dqn.batch_size = 64
  c.dqn.steps_per_iteration = 16
  c.dqn.discount = 0.999
  c.dqn.log_every = 50
  c.dqn.checkpoint_every = 50
  c.stream.train_streams, c.stream.train_length = 32, 20_000
  c.stream.test_streams, c.stream.test_length = 32, 20_000
  if arg in ("fast", "tiny", "deploy"):
    c.metrics.classifiers.num_epochs = 2
    c.dqn.iterations, c.dqn.log_every, c.dqn.checkpoint_every = 10, 5, 5
    c.stream.train_streams, c.stream.train_length = 4, 2_000
    c.stream.test_streams, c.stream.test_length = 4, 2_000
    c.export.int8 = False
  if arg == "tiny":
    c.dqn.iterations, c.dqn.log_every = 12, 1
    c.export.int8 = True
  if arg == "deploy":
    c.metrics.classifiers.num_epochs = 1
    c.dqn.iterations, c.dqn.checkpoint_every = 0, 0
    c.stream.train_streams, c.stream.train_length = 2, 1_000
    c.stream.test_streams, c.stream.test_length = 2, 1_000
  return c
