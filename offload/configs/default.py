"""Default config: the original's settings (edgeml-dqn `train.py` / `simulate.py` flags), by section.

  metrics  where the per-image offloading metrics come from (and the digits classifier pair)
  bucket   the token-bucket settings, trained together (vmapped): (rates[i], depths[i])
  stream   the image order and arrival process of the training pool and the test streams
  dqn      the network and its fitted Q-iteration
  mdp      the MDP's value iteration
  export   what `simulate` exports (TFLite, ONNX, int8 + C array, MDP thresholds)
  multicam N cameras behind one switch: isolated / hierarchical / smart switch (`runtest_mcam`)
  robust   MDP and baseline fitted on shifted training metrics (`runtest_robust`)

docs/offload.md has the table from the original's flag names (`--lr`, `--tr`, `--nhist1`, ...) to these keys.

Run:  edgeinfer offload train --config=offload/configs/default.py --workdir=runs/offload \
        --config.metrics.source=npz --config.metrics.file=data/ofa_top5.npz
      edgeinfer offload simulate --config=offload/configs/default.py --workdir=runs/offload \
        --config.metrics.source=npz --config.metrics.file=data/ofa_top5.npz
      edgeinfer offload multicam robust --config=offload/configs/default.py --workdir=runs/offload
Runtime: about 0.1-0.2 s per Q-iteration per row on 2 CPU cores (1000 iterations ~ 3 min per row);
the simulation of 100 x 100k test images takes seconds per policy.
"""

import ml_collections
from ml_collections.config_dict import placeholder

from common import config as cfg_lib
from common.serving import runner


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  cfg_lib.variant(arg, ())
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.metrics = ml_collections.ConfigDict(
    {
      "source": "digits",  # "digits" (train the classifier pair here), "npz" (metrics.file), "synthetic"
      "file": "",  # the metrics npz of source "npz"
      "fold": 0,  # which fold of the digits metrics
      "cost": "top1",  # the per-image cost of a classifier: "top1", "top5" or "rank" (capped at 10)
      "classifiers": {
        "dataset": "digits",
        "data_dir": "",
        "widths_weak": (8, 16),
        "widths_strong": (16, 32, 64),
        "num_epochs": 12,
        "checkpoint_every": 100,  # steps between checkpoints; 0 = only at the end
        "batch_size": 64,
        "learning_rate": 1e-2,
        "classifier_fraction": 0.5,  # of the training split; the rest and the test split give the metrics
        "folds": 3,
      },
    }
  )
  c.bucket = ml_collections.ConfigDict({"rates": (0.1, 0.25), "depths": (4.0, 5.0)})
  c.stream = ml_collections.ConfigDict(
    {
      "order": "location_reset",  # "iid" or "location_reset"
      "spread": 0.1,  # location reset: width of the metric-rank window, a fraction of the images
      "reset_prob": 0.01,  # location reset: probability per image that the window jumps
      "arrivals": "periodic",  # "periodic" (one slot apart) or "markov" (two-state Markov-modulated)
      "interval_state0": 1,  # markov: slots between arrivals in state 0 / state 1
      "interval_state1": 3,
      "leave_prob_state0": 0.001,  # markov: probability per slot of leaving state 0 / state 1
      "leave_prob_state1": 0.0005,
      # training pool (the original: 100 x 1e6) and test streams
      "train_streams": 100,
      "train_length": 200_000,
      "test_streams": 100,
      "test_length": 100_000,
    }
  )
  c.dqn = ml_collections.ConfigDict(
    {
      "history_metrics": 95,  # inputs: the current metric and this many past ones
      "history_intervals": -1,  # and this many + 1 past arrival intervals (-1: none)
      "num_layers": 5,
      "hidden_units": 64,
      "learning_rate": 1e-3,  # Adam's; a new value applies when a run resumes
      "iterations": 1000,  # Q-iterations in all (absolute: raising it continues a run)
      "batch_size": 128,
      "steps_per_iteration": 128,  # Adam steps per Q-iteration (tuples = batch_size * this)
      "discount": 0.9999,
      "num_seeds": 1,  # DQNs per bucket setting, trained together (vmapped)
      "log_every": 100,  # a metrics.jsonl row every this many Q-iterations (0: only at the end)
      "checkpoint_every": 100,
    }
  )
  c.mdp = ml_collections.ConfigDict({"discount": 0.9999})  # gamma of the MDP's value iteration
  c.export = ml_collections.ConfigDict(
    {
      "enabled": True,  # simulate exports the first setting's DQN and every setting's MDP thresholds
      "int8": True,  # also the int8 DQN + TFLite Micro C array
      # RAM of the target MCU, the most tensor arena TFLite Micro gets for the int8 DQN
      # (an STM32F746-class Cortex-M7: 320 KB SRAM)
      "target_ram_bytes": 320 * 1024,
    }
  )
  c.multicam = ml_collections.ConfigDict(
    {
      "cameras": (2, 3, 4, 5, 6, 7, 8),  # camera counts N behind the switch
      "rates": (0.05, 0.1, 0.25),  # per-camera share r (the switch gains r per camera arrival)
      "depths": (1.0, 2.0),  # per-camera share b (the switch holds N b tokens)
      # the hierarchical search's grid of per-camera (r_i, b_i), as the original's
      "grid_rates": tuple(k / 40 for k in range(2, 21)),
      "grid_depths": tuple(k / 4 for k in range(4, 41)),
      "train_slots": 2_000,  # the search's streams on the training images, per camera
      "train_streams": 16,
      "test_slots": 20_000,  # the strategies' streams on the test images, per camera
      "test_streams": 16,
      "mdp_sweeps": 10_000,  # the most value-iteration sweeps per policy (the original's 1e4)
      "chunk": 1024,  # settings per vmapped call
    }
  )
  c.robust = ml_collections.ConfigDict(
    {
      "drops": (-50, -25, -10, 10, 25, 50),  # percent of the training images dropped by metric rank
      "rates": (0.05, 0.1, 0.25),
      "depths": (1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0),
      "test_slots": 20_000,
      "test_streams": 16,
      "mdp_sweeps": 10_000,
      "chunk": 256,
    }
  )
  # the deploy and device steps (common.serving.runner); fps: arrival slots per second
  c.deploy = runner.config_section(fps=20.0, deadline=0.5)
  c.deploy.policy = "all"  # mdp | dqn | all (one stream each, in turn)
  c.deploy.setting = 0  # index of the (bucket.rates, bucket.depths) setting
  c.deploy.stream_seed = 0  # seed of the image and interval stream
  c.deploy.order = ""  # iid | location_reset; "" = config.stream.order
  c.deploy.arrivals = ""  # periodic | markov; "" = config.stream.arrivals
  # a fleet (offload.fleet): this many camera processes behind the server's switch (1: one device)
  c.deploy.cameras = 1
  c.deploy.strategy = "all"  # fleet: isolated | hierarchical | smart | all (in turn)
  c.deploy.stream_seeds = ()  # fleet: camera j's stream seed (empty: stream_seed + j)
  c.deploy.share_rate = placeholder(float)  # fleet: per-camera share r (None: config.multicam.rates[0])
  c.deploy.share_depth = placeholder(float)  # fleet: per-camera share b (None: config.multicam.depths[0])
  return c
