"""Sequences: reproducible from a seed, vmappable, with the intended statistics."""

import jax
import numpy as np
import pytest

from offload import sequences


def test_reproducible_and_seed_sensitive():
  a = sequences.image_sequences(jax.random.key(0), n=1000, num=3, length=500, stype=1)
  b = sequences.image_sequences(jax.random.key(0), n=1000, num=3, length=500, stype=1)
  c = sequences.image_sequences(jax.random.key(1), n=1000, num=3, length=500, stype=1)
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  assert a.shape == (3, 500) and a.dtype == np.int32
  assert not np.array_equal(a[0], a[1])  # streams differ


def test_locreset_is_banded():
  n = 10_000
  s = np.asarray(sequences.seq_locreset(jax.random.key(3), n, 20_000, 0.1, 0.01))
  assert s.min() >= 0 and s.max() < n
  jumps = np.abs(np.diff(s.astype(np.int64)))
  jumps = np.minimum(jumps, n - jumps)  # wrap-around distance
  assert np.mean(jumps <= 0.1 * n + 1) > 0.98  # consecutive images from one band
  iid = np.asarray(sequences.seq_iid(jax.random.key(3), n, 20_000))
  assert np.mean(np.abs(np.diff(iid)) <= 0.1 * n) < 0.3
  # spread 1 covers everything
  wide = np.asarray(sequences.seq_locreset(jax.random.key(4), n, 20_000, 1.0, 0.01))
  assert np.unique(wide).size > 0.8 * n


def test_doubleperiodic_statistics():
  iv = np.asarray(sequences.interval_sequences(jax.random.key(0), num=8, length=50_000, itype=1))
  assert iv.min() >= 1 and iv.max() <= 3
  # two-state chain: the digest measures tau ~ 1.78 with ~61% ones and ~39% threes
  assert iv.mean() == pytest.approx(1.78, abs=0.15)
  assert np.mean(iv == 1) == pytest.approx(0.61, abs=0.08)
  assert np.all(np.asarray(sequences.interval_sequences(jax.random.key(0), num=2, length=10, itype=0)) == 1)
