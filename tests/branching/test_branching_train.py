"""Training smoke run: original and stretched with the pycls recipe, EMA, one traced step."""

import jax
import jax.numpy as jnp
import numpy as np

from branching import losses, train
from common import app

TINY = "branching/configs/quick.py:tiny"


def test_train_and_evaluate_smoke(tmp_path):
  c = app.load_config_file(TINY)
  res = train.train_and_evaluate(c, tmp_path, show_progress=False)
  for role in ("original", "stretched"):
    r = res[role]
    assert 0.0 <= r["ema_accuracy"] <= 1.0 and np.isfinite(r["macs"])
    assert (tmp_path / role / "metrics.jsonl").exists()
  assert res["original"]["params"] != res["stretched"]["params"]


def test_ema_warmup_and_step_traced_once(monkeypatch):
  import chex

  from branching import network as bcfg
  from branching.models import AnyNet
  from common import data as data_lib

  # the step traces the loss once per trace of itself: two calls, one trace
  monkeypatch.setattr(losses, "classification_loss", chex.assert_max_traces(losses.classification_loss, n=1))
  c = app.load_config_file(TINY)
  net = bcfg.load(c.stretched).replace(num_classes=10)
  model = AnyNet(net)
  tx = train.make_optimizer(c.train, 10, 5)
  v = model.init(jax.random.key(0), np.zeros((1, 32, 32, 3), np.float32), train=False)
  copy = lambda t: jax.tree_util.tree_map(jnp.copy, t)  # noqa: E731
  state = train.EmaState(
    jnp.zeros((), jnp.int32),
    copy(v["params"]),
    copy(v["batch_stats"]),
    tx.init(v["params"]),
    copy(v["params"]),
    copy(v["batch_stats"]),
  )
  step, _, _ = train.make_steps(model, tx, mean=np.zeros(3), std=np.ones(3), ema_decay=0.99)
  ds = data_lib.Dataset(
    np.random.default_rng(0).random((8, 32, 32, 3), np.float32), np.arange(8, dtype=np.int32) % 10, 10, "toy"
  )
  batch = next(data_lib.batches(ds, 8))
  p0 = np.asarray(jax.tree_util.tree_leaves(v["params"])[0])
  state, m = step(state, batch, jax.random.key(1))
  state, m = step(state, batch, jax.random.key(2))
  assert np.isfinite(float(m["loss"]))
  # decay at step 0 is 1/10: the EMA moved most of the way to the new params
  e, p = jax.tree_util.tree_leaves(state.ema_params)[0], jax.tree_util.tree_leaves(state.params)[0]
  assert np.abs(np.asarray(e) - np.asarray(p)).max() < np.abs(np.asarray(p0) - np.asarray(p)).max()
