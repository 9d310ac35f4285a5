"""Token bucket: the digest's discretisation examples, step invariants (hypothesis), transition matrices."""

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.errors import ConfigError
from offload import bucket


@pytest.mark.parametrize(
  "rate,depth,qpm",
  [
    (0.25, 2, (1, 4, 8)),
    (0.1, 4, (1, 10, 40)),
    (0.05, 1, (1, 20, 20)),
    (0.05, 20, (1, 20, 400)),
    (0.15, 2.5, (3, 20, 50)),
  ],
)
def test_discretize_digest_examples(rate, depth, qpm):
  assert tuple(bucket.discretize(rate, depth)) == qpm
  q, p, m = qpm
  assert 2 * (m + 1) - q - p == {8: 13, 40: 71, 20: 21, 400: 781, 50: 79}[m]  # the original Q-vector length


def test_discretize_rejects_bad_values():
  with pytest.raises(ConfigError, match="rate"):
    bucket.discretize(0.0, 2)
  with pytest.raises(ConfigError, match="depth"):
    bucket.discretize(0.1, 0.5)


@settings(max_examples=60, deadline=None)
@given(
  rate=st.floats(0.02, 0.9),
  depth=st.floats(1.0, 8.0),
  wants=st.lists(st.booleans(), min_size=1, max_size=60),
  intervals=st.lists(st.integers(1, 4), min_size=60, max_size=60),
)
def test_step_invariants(rate, depth, wants, intervals):
  q, p, m = bucket.discretize(rate, depth)
  n = jnp.int32(m)
  for want, iv in zip(wants, intervals, strict=False):
    n_next, sent = bucket.step(n, jnp.bool_(want), jnp.int32(iv), q, p, m)
    assert not (bool(sent) and int(n) < p)  # offload only when n >= p
    assert bool(sent) == (want and int(n) >= p)
    assert 0 <= int(n_next) <= m  # never negative, never above m
    assert int(n_next) == min(m, int(n) - p * int(sent) + q * iv)
    n = n_next


def test_transition_matrix_layout():
  qpm = bucket.discretize(0.25, 2)  # (1, 4, 8)
  pmf = bucket.interval_pmf(np.array([1, 1, 3, 2]))
  t = bucket.transition_matrix(qpm, pmf)
  assert t.shape == (9, 8)
  np.testing.assert_allclose(t.sum(1), 1.0)
  # from k = 2: I=1 -> n'=3 (col 2), I=2 -> 4 (col 3), I=3 -> 5 (col 4)
  np.testing.assert_allclose(t[2, [2, 3, 4]], [0.5, 0.25, 0.25])
  # from k = 6: I=1 -> 7; I=2, 3 would pass m and pile up in "full"
  np.testing.assert_allclose(t[6, [6, 7]], [0.5, 0.5])
  np.testing.assert_allclose(t[7, 7], 1.0)
  pad = np.asarray(bucket.padded_transition(1, 8, jnp.asarray(np.pad(pmf, (0, 3))), 12))
  np.testing.assert_allclose(pad[:9, 1:9], t, atol=1e-7)
  assert bucket.mean_interval(pmf) == pytest.approx(1.75)
