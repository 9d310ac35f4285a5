"""The grad-of-grad step: XAI gradients reach the extractor, match finite differences, trace once."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agile import data as agile_data
from agile import reference, xai
from agile import train as agile_train
from agile.models import AgileNN, init_variables
from common import app, mobilenet
from common import train as train_lib
from common.xla_cpu import autodiff_reductions

TINY = app.load_config_file("agile/configs/quick.py:tiny")
CFG = agile_train.model_config(TINY, 3)
RCFG = agile_train.reference_config(TINY, 3)
PREP = agile_data.Preprocess((0.5,) * 3, (0.5,) * 3, flip=False, pad=1, input_size=6)


def _setup(dtype=jnp.float32):
  model = AgileNN(CFG)
  v = init_variables(model, jax.random.key(0), (6, 6, 3))
  ref_vars = reference.ReferenceNet(RCFG).init(jax.random.key(1), jnp.zeros((1, 6, 6, 3)), train=False)
  eval_vars = reference.body_variables(ref_vars)
  x = jax.random.uniform(jax.random.key(2), (4, 6, 6, 3))
  y = jnp.array([0, 1, 2, 1])
  cast = lambda t: jax.tree.map(lambda a: a.astype(dtype), t)
  return model, cast(v), cast(eval_vars), x.astype(dtype), y


def test_xai_gradient_reaches_only_the_extractor_and_matches_finite_differences():
  with jax.enable_x64(True):
    model, v, eval_vars, x, y = _setup(jnp.float64)
    _, eval_loss = reference.make_evaluator(RCFG)
    loss_fn = agile_train.make_loss_fn(model, eval_loss, ig_steps=2)
    hp = {"lam": jnp.float64(0.0), "rho": jnp.float64(1.0)}  # loss = L_skew + L_dis only
    f = jax.jit(lambda p: loss_fn(p, v["batch_stats"], eval_vars, x, y, hp)[0])
    grads = jax.jit(jax.grad(f))(v["params"])
    norms = {k: float(sum(jnp.abs(g).sum() for g in jax.tree.leaves(t))) for k, t in grads.items()}
    assert norms["fe"] > 0
    for name in ("local", "remote_predictor", "quantizer", "combiner"):
      assert norms[name] == 0.0, name
    # Directional derivative along a random direction in the extractor's parameters.
    leaves, tree = jax.tree.flatten(v["params"]["fe"])
    keys = jax.random.split(jax.random.key(3), len(leaves))
    d_leaves = [jax.random.normal(k, a.shape, a.dtype) for k, a in zip(keys, leaves, strict=True)]
    d = jax.tree.unflatten(tree, d_leaves)
    shift = lambda eps: {**v["params"], "fe": jax.tree.map(lambda a, b: a + eps * b, v["params"]["fe"], d)}
    eps = 1e-6
    fd = (f(shift(eps)) - f(shift(-eps))) / (2 * eps)
    analytic = sum(jnp.vdot(g, dd) for g, dd in zip(jax.tree.leaves(grads["fe"]), d_leaves, strict=True))
    np.testing.assert_allclose(analytic, fd, rtol=1e-4)
    # The second-order part is not negligible: dropping it (stop_gradient on IG's gradient) changes the gradient.
    assert abs(float(analytic)) > 0


def test_jitted_step_traces_once_across_batches_and_hyperparameters():
  model, v, eval_vars, _, _ = _setup()
  _, eval_loss = reference.make_evaluator(RCFG)
  tx = agile_train.sgdw(0.1, 10)
  # The step calls prep once per trace: a second trace fails here.
  prep = chex.assert_max_traces(lambda x, rng=None: PREP(x, rng), n=1)
  step = agile_train.make_train_step(model, eval_loss, tx, prep, ig_steps=2)
  state = train_lib.create_train_state(v, tx)
  rng = np.random.default_rng(0)
  for i, lam in enumerate((0.8, 0.5, 0.2)):
    batch = {
      "image": rng.uniform(size=(4, 6, 6, 3)).astype(np.float32),
      "label": rng.integers(0, 3, 4).astype(np.int32),
      "mask": np.ones(4, np.float32),
    }
    hp = {"lam": jnp.float32(lam), "rho": jnp.float32(0.8)}
    state, metrics = step(state, batch, jax.random.key(i), hp, eval_vars)
    assert np.isfinite(float(metrics["loss"]))
  assert int(state.step) == 3


def test_baseline_table_gives_the_gradient_at_zero():
  """table[y_b] / B equals the gradient of the batch's mean CE at the zero feature map, per example."""
  _, eval_vars = _setup()[1:3]
  _, eval_loss = reference.make_evaluator(RCFG)
  y = jnp.array([2, 0, 2, 1, 1])
  zero = jnp.zeros((5, 6, 6, CFG.feature_channels))
  want = jax.jit(jax.grad(lambda f: eval_loss(eval_vars, f, y)))(zero)
  table_vars = reference.with_baseline_gradients(RCFG, eval_vars, zero.shape[1:])
  assert table_vars[reference.BASELINE_KEY].shape == (3, *zero.shape[1:])
  np.testing.assert_allclose(reference.baseline_gradient(table_vars, y), want, rtol=1e-5, atol=1e-8)
  assert reference.baseline_gradient(eval_vars, y) is None


def test_fast_step_equals_the_reference_step():
  """The step as trained (shifted depthwise convs, IG baseline gradients from the per-class table,
  the multi-output reductions of BatchNorm and the depthwise filter gradient, the remote
  predictor's 1x1 filter gradients as matmuls) gives the loss,
  metrics, batch statistics and gradients of the reference step (grouped depthwise convs, the
  baseline gradient computed every step, traced inside `autodiff_reductions()`: flax's BatchNorm);
  its jaxpr holds no grouped convolution and its program the two-output reductions (float64:
  differences are the implementation's, not float32 rounding)."""
  with jax.enable_x64(True):
    _compare_fast_and_reference_steps()


def _compare_fast_and_reference_steps():
  model, v, eval_vars, x, y = _setup(jnp.float64)
  _, eval_loss = reference.make_evaluator(RCFG)
  slow_model = AgileNN(dataclasses.replace(CFG, shifted_depthwise=False, dot_filter_gradients=False))
  table_vars = reference.with_baseline_gradients(RCFG, eval_vars, (6, 6, CFG.feature_channels))
  hp = {"lam": jnp.float64(0.5), "rho": jnp.float64(0.9)}

  def value_and_grad(model, ev):
    loss_fn = agile_train.make_loss_fn(model, eval_loss, ig_steps=2)
    return jax.value_and_grad(lambda p: loss_fn(p, v["batch_stats"], ev, x, y, hp), has_aux=True)

  fast, slow = value_and_grad(model, table_vars), value_and_grad(slow_model, eval_vars)
  assert mobilenet.count_grouped_convs(fast, v["params"]) == 0
  assert mobilenet.count_grouped_convs(slow, v["params"]) > 0
  fast_program = jax.jit(fast).lower(v["params"])
  (lf, (parts_f, stats_f)), gf = fast_program.compile()(v["params"])
  with autodiff_reductions():
    slow_program = jax.jit(slow).lower(v["params"])
    (ls, (parts_s, stats_s)), gs = slow_program.compile()(v["params"])
  pairs = lambda p: p.as_text().count(":2 = stablehlo.reduce(")  # the quantiser's argmin: one in each
  assert pairs(fast_program) > pairs(slow_program) >= 1
  # the remote predictor's 1x1 filter gradients as matmuls (against the same step without them)
  conv_grads = value_and_grad(AgileNN(dataclasses.replace(CFG, dot_filter_gradients=False)), table_vars)
  dots = lambda p: p.as_text().count("stablehlo.dot_general")
  assert dots(fast_program) > dots(jax.jit(conv_grads).lower(v["params"]))
  close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
  close(lf, ls)
  jax.tree.map(close, parts_f, parts_s)
  jax.tree.map(close, stats_f, stats_s)
  jax.tree.map(close, gf, gs)
  assert float(parts_f["skew_loss"] + parts_f["disorder_loss"]) > 0  # the XAI terms take part


def test_rematerialised_ig_gradients_give_the_same_numbers_and_reach_the_step():
  """`remat=True` (the IG gradients under jax.checkpoint: recomputed in the grad-of-grad instead of
  kept) changes where values are computed, not what: the same IG and second-order gradient in
  float64 on a small network; and `make_loss_fn(remat=True)` traces the checkpoint into the step."""
  with jax.enable_x64(True):
    w = jax.random.normal(jax.random.key(0), (6, 4), jnp.float64)
    f = jax.random.normal(jax.random.key(1), (3, 6), jnp.float64)
    loss = lambda f: jnp.sum(jnp.tanh(f @ w) ** 2)
    outer = lambda f, remat: jnp.sum(xai.integrated_gradients(loss, f, 3, remat=remat) ** 2)
    for fn in (lambda f, r: xai.integrated_gradients(loss, f, 3, remat=r), jax.grad(outer)):
      np.testing.assert_allclose(fn(f, True), fn(f, False), rtol=1e-12, atol=1e-14)
  model, v, eval_vars, x, y = _setup()
  _, eval_loss = reference.make_evaluator(RCFG)
  hp = {"lam": jnp.float32(0.5), "rho": jnp.float32(0.9)}

  loss_fn = agile_train.make_loss_fn(model, eval_loss, ig_steps=2, remat=True)
  grad = jax.grad(lambda p: loss_fn(p, v["batch_stats"], eval_vars, x, y, hp)[0])
  assert "remat" in str(jax.make_jaxpr(grad)(v["params"]))


def test_sgdw_is_decoupled_weight_decay():
  tx = agile_train.sgdw(0.1, 100, momentum=0.9, weight_decay=5e-4)
  p = {"w": jnp.array([2.0])}
  s = tx.init(p)
  upd, _ = tx.update({"w": jnp.array([1.0])}, s, p)
  # lr_0 = 0.1: p <- p - lr (g + wd p) = 2 - 0.1 (1 + 1e-3).
  np.testing.assert_allclose(upd["w"], [-0.1 * (1.0 + 5e-4 * 2.0)], rtol=1e-6)


@pytest.mark.parametrize(
  ("key", "value"),
  [
    ("train.rho", 1.5),
    ("model.split_ratio", 0.01),
    ("train.ig_steps", 1),
    ("train.centroid_init", "uniform"),
  ],
)
def test_config_errors_name_the_key(key, value):
  from agile import pipeline
  from common.errors import ConfigError

  c = app.load_config_file("agile/configs/quick.py")
  section, name = key.split(".")
  c[section][name] = value
  with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
    pipeline.validate(c)
