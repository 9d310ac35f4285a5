"""Default config: the original's settings (edgeml-dqn `train.py` / `simulate.py` flags).

Run:  python -m offload.main train --config offload/configs/default.py --workdir runs/offload \
        --config.source=npz --config.metrics_file=data/ofa_top5.npz
      python -m offload.main simulate --config offload/configs/default.py --workdir runs/offload \
        --config.source=npz --config.metrics_file=data/ofa_top5.npz
Runtime: about 0.1-0.2 s per Q-iteration per row on 2 CPU cores (1000 iterations ~ 3 min per row);
the simulation of 100 x 100k test images takes seconds per policy.
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  del arg
  c = ml_collections.ConfigDict()
  c.seed = 0
  # metrics: "digits" (train the classifier pair here), "npz" (metrics_file), "synthetic"
  c.source = "digits"
  c.metrics_file = ""
  c.fold = 0
  c.classifiers = ml_collections.ConfigDict(
    {
      "dataset": "digits",
      "data_dir": "",
      "widths_weak": (8, 16),
      "widths_strong": (16, 32, 64),
      "num_epochs": 12,
      "batch_size": 64,
      "learning_rate": 1e-2,
      "classifier_fraction": 0.5,
      "folds": 3,
      "ctype": 0,
    }
  )
  # token bucket settings, trained together (vmapped): pairs (tr[i], tb[i])
  c.tr = (0.1, 0.25)
  c.tb = (4.0, 5.0)
  # sequences: stype 0 iid / 1 location reset; itype 0 periodic / 1 Markov-modulated
  c.stype = 1
  c.itype = 0
  c.spread = 0.1
  c.rprob = 0.01
  c.int1 = 1
  c.int2 = 3
  c.tprob1 = 0.001
  c.tprob2 = 0.0005
  # network
  c.nhist1 = 95
  c.nhist2 = -1
  c.nlayers = 5
  c.nhidden = 64
  # fitted Q-iteration
  c.lr = 3.0  # learning rate 10^-lr
  c.maxiter = 1000
  c.gbsz = 128
  c.ngdup = 128
  c.discount = 0.9999
  c.mdp_discount = 0.9999  # gamma of the MDP value iteration
  c.num_seeds = 1
  c.sfreq = 100  # log every this many iterations (and evaluate on the validation streams)
  c.ckpt_every = 100
  # sequence pools (the original: 100 x 1e6 training, 5 x 1e5 validation, 100 x 1e5 test)
  c.tnum = 100
  c.tlen = 200_000
  c.vnum = 5
  c.vlen = 20_000
  c.snum = 100
  c.slen = 100_000
  # simulate: export the first setting's DQN (TFLite, ONNX; int8 + C array) and the MDP thresholds
  c.export = True
  c.export_int8 = True
  # RAM of the target MCU, the most tensor arena TFLite Micro gets for the int8 DQN
  # (an STM32F746-class Cortex-M7: 320 KB SRAM)
  c.export_target_ram_bytes = 320 * 1024
  return c
