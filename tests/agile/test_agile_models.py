"""Quantiser, depthwise layer, model shapes, channel remapping."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from agile import xai
from agile.models import (
  AgileConfig,
  AgileNN,
  centroids_from_logits,
  init_variables,
  num_local_channels,
  quantize,
)

_QUANTIZE = {b: jax.jit(lambda x, c, b=b: quantize(x, c, backward=b)) for b in ("soft", "identity")}


@given(st.lists(st.floats(0.0, 6.0, width=32), min_size=16, max_size=16), st.integers(0, 10_000))
@settings(max_examples=25, deadline=None)
def test_quantizer_forward_is_nearest_centroid(values, seed):
  c = jnp.sort(jax.random.uniform(jax.random.key(seed), (8,), minval=0.0, maxval=6.0))
  x = jnp.asarray(values, jnp.float32)
  for backward in ("soft", "identity"):
    y, idx = _QUANTIZE[backward](x, c)
    d = np.abs(np.asarray(x)[:, None] - np.asarray(c)[None])
    np.testing.assert_allclose(np.take_along_axis(d, np.asarray(idx)[:, None], 1)[:, 0], d.min(1), atol=1e-6)
    np.testing.assert_allclose(y, np.asarray(c)[np.asarray(idx)], atol=1e-6)


def test_quantizer_backward_identity():
  c = jnp.array([0.5, 2.0, 4.0])
  x = jnp.array([0.1, 1.9, 3.3, 5.9])
  g = jax.grad(lambda z: jnp.sum(quantize(z, c, backward="identity")[0] * jnp.arange(1.0, 5.0)))(x)
  np.testing.assert_allclose(g, [1, 2, 3, 4])


def test_quantizer_backward_soft_is_soft_assignment_gradient():
  c = jnp.array([0.5, 2.0, 4.0])
  x = jnp.array([0.1, 1.9, 3.3, 5.9])
  soft = lambda z: jnp.sum(jax.nn.softmax(-((z[:, None] - c) ** 2), -1) * c, -1)
  g = jax.grad(lambda z: jnp.sum(quantize(z, c)[0]))(x)
  np.testing.assert_allclose(g, jax.grad(lambda z: jnp.sum(soft(z)))(x), rtol=1e-5)
  gc = jax.grad(lambda cc: jnp.sum(quantize(x, cc)[0]))(c)
  assert np.all(np.isfinite(gc)) and np.any(np.abs(gc) > 0)  # centroids learn through the soft path


def test_centroids_in_relu6_range():
  c = centroids_from_logits(jnp.array([-100.0, 0.0, 100.0]))
  np.testing.assert_allclose(c, [0.0, 3.0, 6.0], atol=1e-5)


def test_num_local_channels_round_half_even():
  assert [num_local_channels(r) for r in (0.1, 0.15, 0.1875, 0.2, 0.25, 0.3, 0.5)] == [2, 4, 4, 5, 6, 7, 12]


TINY = AgileConfig(
  num_classes=3, fe_stride=3, remote_settings=((1, 8, 1, 1), (2, 8, 1, 2)), remote_last_channels=16
)


def test_agilenn_shapes_and_halves():
  model = AgileNN(TINY)
  v = jax.jit(lambda k: init_variables(model, k, (24, 24, 3)))(jax.random.key(0))
  x = jax.random.normal(jax.random.key(1), (2, 24, 24, 3))
  logits, aux = jax.jit(lambda v, x: model.apply(v, x, train=False))(v, x)
  assert logits.shape == (2, 3) and aux["features"].shape == (2, 8, 8, 24)
  assert aux["symbols"].shape == (2, 8, 8, 24 - TINY.k) and aux["symbols"].dtype == jnp.int32
  assert float(aux["features"].min()) >= 0.0 and float(aux["features"].max()) <= 6.0

  @jax.jit
  def halves(v, x):
    local, idx = model.apply(v, x, method=AgileNN.device)
    remote = model.apply(v, model.apply(v, idx, method=AgileNN.dequantize), method=AgileNN.remote)
    return model.apply(v, local, remote, method=AgileNN.combine)

  combined = halves(v, x)
  np.testing.assert_allclose(combined, logits, rtol=1e-5, atol=1e-5)
  w = model.apply(v, method=AgileNN.combination_weights)
  np.testing.assert_allclose(w.sum(), 1.0, rtol=1e-6)


def test_temperature_changes_combination():
  v = jax.jit(lambda k: init_variables(AgileNN(TINY), k, (24, 24, 3)))(jax.random.key(0))
  w1 = AgileNN(TINY).apply(v, method=AgileNN.combination_weights)
  w6 = AgileNN(dataclasses.replace(TINY, temperature=6.0)).apply(v, method=AgileNN.combination_weights)
  assert abs(float(w6[0] - 0.5)) < abs(float(w1[0] - 0.5))


def test_remap_permutes_feature_channels():
  model = AgileNN(TINY)
  v = jax.jit(lambda k: init_variables(model, k, (24, 24, 3)))(jax.random.key(0))
  # Make BN non-trivial so that forgetting to permute it would show.
  v = jax.tree.map(lambda a: a, v)
  bn = v["params"]["fe"]["bn2"]
  v["params"]["fe"]["bn2"] = {
    "scale": bn["scale"] * jnp.arange(1.0, 25.0) / 10,
    "bias": jnp.linspace(-1, 1, 24),
  }
  stats = v["batch_stats"]["fe"]["bn2"]
  v["batch_stats"]["fe"]["bn2"] = {"mean": stats["mean"] + 0.1 * jnp.arange(24.0), "var": stats["var"] * 2}
  mapping = np.random.default_rng(0).permutation(24)
  x = jax.random.normal(jax.random.key(1), (2, 24, 24, 3))
  feats = jax.jit(lambda v, x: model.apply(v, x, train=False)[1]["features"])
  f = feats(v, x)
  f2 = feats(xai.remap_feature_channels(v, mapping), x)
  np.testing.assert_allclose(f2, np.asarray(f)[..., mapping], rtol=1e-5, atol=1e-6)
