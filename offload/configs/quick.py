"""Quick config: metrics from a tiny vs a larger CNN on `digits`, a short DQN run, all policies simulated.

Run:  python -m offload.main train --config offload/configs/quick.py --workdir runs/offload_quick
      python -m offload.main simulate --config offload/configs/quick.py --workdir runs/offload_quick
Runtime: about 65 s of CPU on 2 cores for both commands with exports (the quickstart stage runs the same).
"""

from offload.configs import default


def get_config(arg: str | None = None):
  c = default.get_config(arg)
  c.classifiers.num_epochs = 8
  c.nhist1 = 15
  c.maxiter = 150
  c.gbsz = 64
  c.ngdup = 16
  c.discount = 0.999
  c.sfreq = 50
  c.ckpt_every = 50
  c.tnum = 32
  c.tlen = 20_000
  c.vnum = 4
  c.vlen = 5_000
  c.snum = 32
  c.slen = 20_000
  return c
