"""Quantizer against NumPy, the constant-channel guard, straight-through gradient, residual rates."""

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings

from coinfer import compress
from common.errors import ConfigError


def _np_quantize(x, bits, per_sample):
  axes = tuple(range(1 if per_sample else 0, x.ndim - 1))
  mn = x.min(axis=axes, keepdims=True)
  mx = x.max(axis=axes, keepdims=True)
  levels = 2.0**bits - 1
  span = np.where(mx - mn < 1e-6, 1.0, mx - mn)
  out = mn + np.round((x - mn) * levels / span) * span / levels
  return np.where(mx - mn < 1e-6, x, out)


@pytest.mark.parametrize("bits", [1, 2, 4, 8, 16])
@pytest.mark.parametrize("per_sample", [False, True])
def test_quantize_matches_numpy(bits, per_sample):
  x = np.random.default_rng(bits).uniform(0, 6, (3, 5, 4, 6)).astype(np.float32)
  got = np.asarray(compress.quantize(jnp.asarray(x), bits, per_sample=per_sample))
  want = _np_quantize(x.astype(np.float64), bits, per_sample)
  np.testing.assert_allclose(got, want, atol=1e-5 * 6)
  if bits <= 4:  # at most 2**bits distinct values per channel (per sample)
    assert len(np.unique(got[0, :, :, 0] if per_sample else got[..., 0])) <= 2**bits


def test_one_bit_gives_min_and_max():
  x = jnp.asarray([[0.0, 1.0, 2.0, 2.9, 3.1, 6.0]]).reshape(1, 6, 1, 1)
  np.testing.assert_allclose(np.asarray(compress.quantize(x, 1)).ravel(), [0, 0, 0, 0, 6, 6])


def test_constant_channel_guard_no_nan():
  x = jnp.zeros((2, 4, 4, 3)).at[..., 1].set(jnp.arange(32.0).reshape(2, 4, 4))
  x = x.at[..., 2].set(3.5)
  y = compress.quantize(x, 2)
  assert np.all(np.isfinite(np.asarray(y)))
  np.testing.assert_array_equal(np.asarray(y[..., 0]), 0.0)
  np.testing.assert_array_equal(np.asarray(y[..., 2]), 3.5)
  g = jax.grad(lambda v: compress.quantize(v, 2).sum())(x)
  assert np.all(np.isfinite(np.asarray(g)))


def test_straight_through_gradient_is_identity():
  x = jax.random.uniform(jax.random.key(0), (2, 3, 3, 4))
  w = jax.random.normal(jax.random.key(1), x.shape)
  g = jax.grad(lambda v: (compress.quantize(v, 1) * w).sum())(x)
  np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-6)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 8), st.integers(0, 10_000))
def test_quantize_error_within_half_step(bits, seed):
  x = np.random.default_rng(seed).normal(size=(2, 3, 3, 2)).astype(np.float32)
  y = np.asarray(compress.quantize(jnp.asarray(x), bits))
  span = x.max(axis=(0, 1, 2)) - x.min(axis=(0, 1, 2))
  assert np.all(np.abs(y - x) <= span / (2**bits - 1) / 2 + 1e-5)


def test_encode_decode_matches_per_sample_quantize():
  z = np.random.default_rng(0).uniform(0, 6, (3, 4, 4, 2)).astype(np.float32)
  codes, mn, mx = compress.encode_np(z, 4)
  assert codes.max() <= 15 and codes.dtype == np.uint8
  np.testing.assert_allclose(
    compress.decode_np(codes, mn, mx, 4),
    np.asarray(compress.quantize(jnp.asarray(z), 4, per_sample=True)),
    atol=1e-5,
  )


def test_residual_rate_matches_digest_table():
  assert compress.residual_rate(1, 1, (224, 224, 3)) == pytest.approx(1 / 96)
  assert compress.residual_rate(32, 8, (224, 224, 3)) == pytest.approx(2.6667, abs=1e-4)
  assert compress.residual_rate(7, 2, (224, 224, 3)) == pytest.approx(0.1458, abs=1e-4)
  assert compress.payload_bits(1, 1, (224, 224, 3)) == 1568 * 8
  assert compress.residual_rate(4, 4, (32, 32, 3)) == pytest.approx(4 * 4 * 256 / (32 * 32 * 3 * 8))


def test_setups_and_pareto():
  setups = compress.make_setups()
  assert len(setups) == 50 and setups[0].name == "N1Q1" and setups[-1].name == "N32Q16"
  with pytest.raises(ConfigError, match="bits"):
    compress.make_setups((1, 2), (0, 4))
  # (size, acc): 2 is dominated by 1 (smaller and more accurate); 3 ties 0 in size but less accurate
  front = compress.pareto_front([1, 2, 3, 1, 5], [0.5, 0.7, 0.6, 0.4, 0.9])
  assert front == [0, 1, 4]
