"""Every technique's training reads its `checkpoint_every` key (so a killed long training resumes mid-way)."""

from __future__ import annotations

from common import app


def test_coinfer_stages_checkpoint_every_config_steps():
  from coinfer import train

  c = app.load_config_file("coinfer/configs/quick.py")
  assert c.train.checkpoint_every > 0  # LoopConfig's default is 0: an unread key would fail below
  assert train.loop_config(c, c.init, "init", 1000).checkpoint_every == c.train.checkpoint_every


def test_subnets_trainings_checkpoint_every_config_steps():
  from subnets import pipeline
  from subnets import train as subnets_train

  c = app.load_config_file("subnets/configs/quick.py")
  for sec in (c.pretrain, c.finetune):
    assert sec.checkpoint_every > 0
    assert subnets_train._loop(pipeline._tc(sec), "x").checkpoint_every == sec.checkpoint_every
