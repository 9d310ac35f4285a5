"""Permutation invariance, slicing == zeroing, hand-counted MACs and scores."""

import jax
import numpy as np
import pytest

from subnets import models, surgery

CFGS = {
  "dnn": (models.ModelConfig(kind="dnn", widths=(7, 5, 6), num_classes=4), (4, 3, 2)),
  "cnn": (
    models.ModelConfig(
      kind="cnn",
      widths=(5, 6),
      num_classes=4,
      first_kernel=(3, 3),
      first_stride=(1, 1),
      second_kernel=(3, 3),
      bottleneck=3,
      hidden=7,
    ),
    (8, 6, 1),
  ),
  "ds_cnn": (models.ModelConfig(widths=(6, 5, 7), dw_strides=(2, 1), num_classes=4), (8, 8, 3)),
}


def _randomize(variables, seed):
  """Random params and non-trivial BN statistics (so BN is not the identity), in NumPy."""
  rng = np.random.default_rng(seed)
  out = jax.tree_util.tree_map(
    lambda x: (rng.uniform(0.5, 1.5, x.shape) * rng.choice([-1.0, 1.0], x.shape)).astype(np.float32),
    variables,
  )
  out["batch_stats"] = jax.tree_util.tree_map(np.abs, out["batch_stats"])
  return out


def _apply(cfg, v, x):
  return models.RedsNet(cfg).apply(v, x, train=False)[0]


@pytest.fixture(params=sorted(CFGS))
def setup(request):
  cfg, shape = CFGS[request.param]
  v = _randomize(models.init_variables(cfg, jax.random.key(0), shape), 1)
  x = np.random.default_rng(2).normal(size=(3, *shape)).astype(np.float32)
  return cfg, v, x


def test_permutation_preserves_function(setup):
  cfg, v, x = setup
  rng = np.random.default_rng(0)
  perms = [rng.permutation(w) for w in cfg.widths]
  pv = surgery.permute_variables(v, cfg, perms)
  np.testing.assert_allclose(_apply(cfg, pv, x), _apply(cfg, v, x), rtol=1e-5, atol=1e-5)
  # and it really moved something
  k = pv["params"][sorted(pv["params"])[0]]
  assert not all(np.allclose(a, b) for a, b in zip(jax.tree_util.tree_leaves(k),
                 jax.tree_util.tree_leaves(v["params"][sorted(v["params"])[0]]), strict=False))  # fmt: skip


def test_slice_equals_dense_with_dropped_units_zeroed(setup):
  cfg, v, x = setup
  widths = [max(1, w - 2 - i) for i, w in enumerate(cfg.widths)]
  sub = surgery.slice_variables(v, cfg, widths)
  thin = _apply(cfg.with_widths(widths), sub, x)
  zeroed = _apply(cfg, surgery.zero_dropped(v, cfg, widths), x)
  np.testing.assert_allclose(thin, zeroed, rtol=1e-5, atol=1e-5)
  assert not np.allclose(thin, _apply(cfg, v, x), atol=1e-3)


def test_slice_shapes_match_thin_model(setup):
  cfg, v, _ = setup
  widths = [1] * len(cfg.widths)
  sub = surgery.slice_variables(v, cfg, widths)
  shape = CFGS[cfg.kind][1]
  ref = jax.eval_shape(lambda k: models.init_variables(cfg.with_widths(widths), k, shape), jax.random.key(0))
  assert jax.tree_util.tree_map(lambda a: a.shape, sub) == jax.tree_util.tree_map(lambda a: a.shape, ref)


def test_macs_match_hand_count():
  # ds_cnn on 8x8x3: conv0 3x3 s2 -> 4x4 x6; dw1 s2 -> 2x2 x6; pw1 6->5 at 2x2; dw2 s1 2x2 x5;
  # pw2 5->7 at 2x2; head 7->4.
  cfg, shape = CFGS["ds_cnn"]
  cc = models.chain_costs(cfg, shape)
  hand = 9 * 3 * 16 * 6 + 9 * 4 * 6 + 4 * 6 * 5 + 9 * 4 * 5 + 4 * 5 * 7 + 7 * 4
  assert cc.macs(cfg.widths) == hand
  w = (2, 3, 1)
  hand_w = 9 * 3 * 16 * 2 + 9 * 4 * 2 + 4 * 2 * 3 + 9 * 4 * 3 + 4 * 3 * 1 + 1 * 4
  assert cc.macs(w) == hand_w
  # dnn on 4x3x2 = 24 inputs
  cfg, shape = CFGS["dnn"]
  assert models.chain_costs(cfg, shape).macs((7, 5, 6)) == 24 * 7 + 7 * 5 + 5 * 6 + 6 * 4
  # cnn on 8x6x1: conv0 3x3 s1 -> 8x6 x5; conv1 3x3 s(2,1) -> 4x6 x6; lin 144->3; fc 3->7; head 7->4
  cfg, shape = CFGS["cnn"]
  hand = 9 * 48 * 5 + 9 * 5 * 24 * 6 + 24 * 6 * 3 + 3 * 7 + 7 * 4
  assert models.chain_costs(cfg, shape).macs(cfg.widths) == hand


def test_param_count_matches_hand_count():
  cfg, shape = CFGS["ds_cnn"]
  # conv0 27*6, bn0 12, dw1 9*6, dwbn1 12, pw1 30, pwbn1 10, dw2 45, dwbn2 10, pw2 35, pwbn2 14, head 28+4
  assert models.param_count(cfg, shape) == 162 + 12 + 54 + 12 + 30 + 10 + 45 + 10 + 35 + 14 + 32
  assert models.param_count(cfg, shape, include_bn=False) == 162 + 54 + 30 + 45 + 35 + 32


def test_taylor_scores_against_numpy():
  cfg, shape = CFGS["ds_cnn"]
  v = _randomize(models.init_variables(cfg, jax.random.key(0), shape), 1)
  g = jax.tree_util.tree_map(lambda a: a * 0.5 - 0.1, v["params"])
  s = surgery.taylor_scores(v["params"], g, cfg)
  p = {k: {n: np.asarray(a) for n, a in m.items()} for k, m in v["params"].items()}
  gg = {k: {n: np.asarray(a) for n, a in m.items()} for k, m in g.items()}
  wg = lambda m: np.abs(p[m]["kernel"] * gg[m]["kernel"])  # noqa: E731
  ref0 = wg("conv0").sum((0, 1, 2)) + wg("dw1").sum((0, 1, 2))
  ref1 = wg("pw1").sum((0, 1, 2)) + wg("dw2").sum((0, 1, 2))
  ref2 = wg("pw2").sum((0, 1, 2))
  for a, b in zip(s, [ref0, ref1, ref2], strict=False):
    np.testing.assert_allclose(a, b, rtol=1e-6)
