"""agile.losses and agile.xai against hand-computed NumPy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agile import losses, xai

K = 2


@pytest.fixture(scope="module")
def imp():
  rng = np.random.default_rng(0)
  x = rng.uniform(0.0, 1.0, (3, 2, 2, 5)).astype(np.float32)
  x[1, ..., :K] *= 5.0  # a local-heavy example
  x[2, 0, 0, 0] = 0.0
  return x


def np_skew(x, k):
  p = x.sum(axis=(1, 2))
  return p[:, :k].sum(1) / (p.sum(1) + 1e-9)


def test_skewness_matches_numpy(imp):
  s = np_skew(imp, K)
  np.testing.assert_allclose(losses.skewness_per_example(imp, K), s, rtol=1e-6)
  np.testing.assert_allclose(losses.skewness(imp, K), s.mean(), rtol=1e-6)


def test_skewness_hand_values():
  # Two examples, 1x1 maps, 4 channels, k=1: P = [[3,1,0,0], [1,1,1,1]] -> s = [0.75, 0.25].
  x = np.array([[3, 1, 0, 0], [1, 1, 1, 1]], np.float32).reshape(2, 1, 1, 4)
  np.testing.assert_allclose(losses.skewness(x, 1), 0.5, rtol=1e-6)
  np.testing.assert_allclose(losses.skewness_loss(x, 1, 0.8), (0.05 + 0.55) / 2, rtol=1e-5)
  # disorder: min local - per example 3 and 1; max remote 1 and 1; totals 4 and 4.
  # (1-3)/4 -> 0 (clipped), (1-1)/4 = 0 -> mean 0.
  np.testing.assert_allclose(losses.disorder_loss(x, 1), 0.0, atol=1e-7)
  y = np.array([[0.5, 2, 0, 0]], np.float32).reshape(1, 1, 1, 4)
  np.testing.assert_allclose(losses.disorder_loss(y, 1), (2 - 0.5) / 2.5, rtol=1e-6)


@pytest.mark.parametrize("rho", [0.0, 0.5, 0.8, 1.0])
def test_skewness_loss_is_hinge(imp, rho):
  s = np_skew(imp, K)
  np.testing.assert_allclose(
    losses.skewness_loss(imp, K, rho), np.maximum(rho - s, 0).mean(), rtol=1e-6, atol=1e-8
  )


def test_disorder_loss_matches_numpy(imp):
  total = imp.sum(axis=(1, 2, 3))
  mins = imp[..., :K].min(axis=(1, 2, 3))
  maxs = imp[..., K:].max(axis=(1, 2, 3))
  want = np.maximum((maxs - mins) / total, 0).mean()
  np.testing.assert_allclose(losses.disorder_loss(imp, K), want, rtol=1e-6)


def test_disorder_loss_zero_importance_is_finite():
  x = np.zeros((2, 2, 2, 4), np.float32)
  x[0] = 1.0
  val, grad = jax.value_and_grad(lambda a: losses.disorder_loss(a, 1))(jnp.asarray(x))
  assert np.isfinite(val) and np.all(np.isfinite(grad))


def test_total_loss_combination(imp):
  loss, parts = losses.total_loss(jnp.float32(2.0), imp, k=K, rho=0.8, lam=0.7)
  want = 0.7 * 2.0 + 0.3 * (parts["skew_loss"] + parts["disorder_loss"])
  np.testing.assert_allclose(loss, want, rtol=1e-6)


def test_trapezoid_weights():
  a, w = xai.trapezoid_weights(2)
  np.testing.assert_allclose(a, [0, 1])
  np.testing.assert_allclose(w, [0.5, 0.5])
  a, w = xai.trapezoid_weights(5)
  np.testing.assert_allclose(w.sum(), 1.0)
  np.testing.assert_allclose(w, [0.125, 0.25, 0.25, 0.25, 0.125])
  with pytest.raises(ValueError):
    xai.trapezoid_weights(1)


def test_integrated_gradients_two_point_matches_formula():
  # loss(f) = sum(a * f^2 + b * f): grad = 2 a f + b; IG2 = |0.5 (b + 2 a f + b) * f|.
  rng = np.random.default_rng(1)
  a = rng.normal(size=(2, 3, 3, 4)).astype(np.float32)
  b = rng.normal(size=(2, 3, 3, 4)).astype(np.float32)
  f = rng.uniform(0, 6, size=(2, 3, 3, 4)).astype(np.float32)
  fn = lambda z: jnp.sum(a * z**2 + b * z)
  want = np.abs(0.5 * (b + 2 * a * f + b) * f)
  np.testing.assert_allclose(xai.integrated_gradients(fn, f, 2), want, rtol=1e-5)
  # Exact IG of a quadratic is |(a f + b) f|; the trapezoid is exact for linear gradients.
  np.testing.assert_allclose(xai.integrated_gradients(fn, f, 7), np.abs((a * f + b) * f), rtol=1e-4)


def test_integrated_gradients_completeness_many_steps():
  # Sum of signed IG -> loss(f) - loss(0) as steps grow (completeness axiom).
  fn = lambda z: jnp.sum(jnp.sin(z)) + jnp.sum(z) ** 2 * 0.01
  f = jnp.linspace(0.1, 2.0, 12).reshape(1, 2, 2, 3)
  alphas, w = xai.trapezoid_weights(200)
  g = sum(wi * jax.grad(fn)(ai * f) for ai, wi in zip(alphas, w, strict=True))
  np.testing.assert_allclose(jnp.sum(g * f), fn(f) - fn(jnp.zeros_like(f)), rtol=1e-4)


def test_channel_scores_topk_keeps_identity():
  # P per example: channel 3 and 0 are the top-2 in example 0; 3 and 1 in example 1.
  p = np.array([[5, 1, 0, 9, 2], [0, 7, 1, 8, 3]], np.float32)
  imp = p.reshape(2, 1, 1, 5)
  np.testing.assert_allclose(xai.channel_scores(imp, 2, "topk_appearance"), [0.5, 0.5, 0, 1, 0])
  np.testing.assert_allclose(xai.channel_scores(imp, 2, "global_importance"), p.mean(0))
