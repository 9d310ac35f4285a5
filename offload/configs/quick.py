"""Quick config: metrics from a tiny vs a larger CNN on `digits`, a short DQN run, all policies simulated.

Run:  edgeinfer offload all --config=offload/configs/quick.py --workdir=runs/offload_quick
Variants: `quick.py:fast` (the quickstart's smoke run: 10 Q-iterations, 4 x 2k streams, no int8),
`quick.py:tiny` (the tests: `fast` continued to 12 Q-iterations with a metrics row each),
`quick.py:deploy` (the deploy test: 1 classifier epoch, an untrained DQN, 2 x 1k streams).
Multi-camera: N = 2, 4, 8 at (r, b) = (0.1, 1) on a 10 x 10 search grid (`fast`: N = 2, 4, 3 x 3).
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
  m = c.multicam
  m.cameras, m.rates, m.depths = (2, 4, 8), (0.1,), (1.0,)
  m.grid_rates, m.grid_depths = tuple(k / 40 for k in range(2, 21, 2)), tuple(k / 4 for k in range(4, 41, 4))
  m.train_slots, m.train_streams, m.test_slots, m.test_streams = 1_000, 8, 2_000, 8
  m.mdp_sweeps, m.chunk = 2_000, 512
  c.robust.depths = (1.0, 2.0, 4.0)
  c.robust.test_slots, c.robust.test_streams, c.robust.mdp_sweeps = 2_000, 8, 2_000
  if arg in ("fast", "tiny", "deploy"):
    c.metrics.classifiers.num_epochs = 2
    c.dqn.iterations, c.dqn.log_every, c.dqn.checkpoint_every = 10, 5, 5
    c.stream.train_streams, c.stream.train_length = 4, 2_000
    c.stream.test_streams, c.stream.test_length = 4, 2_000
    c.export.int8 = False
    m.cameras, m.grid_rates, m.grid_depths = (2, 4), (0.1, 0.2, 0.3), (1.0, 2.0, 3.0)
    m.train_slots, m.test_slots, m.mdp_sweeps = 500, 500, 500
    c.robust.drops, c.robust.rates, c.robust.depths = (-25, 25), (0.1,), (1.0, 2.0)
    c.robust.test_slots, c.robust.mdp_sweeps = 500, 500
  if arg == "tiny":
    c.dqn.iterations, c.dqn.log_every = 12, 1
    c.export.int8 = True
  if arg == "deploy":
    c.metrics.classifiers.num_epochs = 1
    c.dqn.iterations, c.dqn.checkpoint_every = 0, 0
    c.stream.train_streams, c.stream.train_length = 2, 1_000
    c.stream.test_streams, c.stream.test_length = 2, 1_000
  return c
