"""The original AgileNN step in TF2 (launch/benchmarks/agile_tf2.py, the benchmark's reference):
it trains at tiny shapes, and its loss terms agree with agile's JAX functions on the same arrays."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

from agile import losses, models, xai  # noqa: E402
from launch.benchmarks import agile_tf2  # noqa: E402

K = 2


def small_evaluator(feature_size: int, num_classes: int):
  """A stand-in for the stem-less EfficientNetV2-S: 3x3 conv, swish, GAP, dense; frozen."""
  x_in = keras.Input((feature_size, feature_size, 24))
  x = keras.layers.Conv2D(8, 3, padding="same", activation="swish")(x_in)
  evaluator = keras.Model(x_in, keras.layers.Dense(num_classes)(keras.layers.GlobalAveragePooling2D()(x)))
  evaluator.trainable = False
  return evaluator


@pytest.fixture(scope="module")
def importance():
  rng = np.random.default_rng(0)
  x = rng.uniform(0.0, 1.0, (3, 4, 4, 6)).astype(np.float32)
  x[1, ..., :K] *= 6.0  # a local-heavy example: its skewness hinge is zero
  x[2, ..., :K] = 0.0  # local minimum 0, as where the ReLU6 features are 0
  return x


def test_tf2_step_trains_at_tiny_shapes():
  parts = agile_tf2.build_parts(
    input_size=32,
    num_classes=5,
    k=5,
    evaluator_fn=small_evaluator,
    remote_settings=((1, 16, 1, 1), (6, 24, 1, 2)),
  )
  prep = agile_tf2.make_preprocess((0.5, 0.5, 0.5), (0.25, 0.25, 0.25), 4, 32)
  step = agile_tf2.make_train_step(parts, agile_tf2.sgdw(), prep, k=5, rho=0.8, lam=0.8)
  weights = agile_tf2.trainable_weights(parts)
  before = [w.numpy().copy() for w in weights]
  frozen = [w.numpy().copy() for w in parts["evaluator"].weights]
  rng = np.random.default_rng(0)
  out = step(tf.constant(rng.uniform(size=(2, 32, 32, 3)), tf.float32), tf.constant([1, 3], tf.int32))
  assert set(out) == {"loss", "ce", "skew_loss", "disorder_loss", "skewness"}
  assert all(np.isfinite(float(v)) for v in out.values())
  changed = [not np.array_equal(b, w.numpy()) for b, w in zip(before, weights, strict=True)]
  assert all(changed), [w.path for w, c in zip(weights, changed, strict=True) if not c]
  for b, w in zip(frozen, parts["evaluator"].weights, strict=True):
    np.testing.assert_array_equal(b, w.numpy())


def test_tf2_xai_losses_match_jax(importance):
  skew_loss, disorder_loss, skewness = agile_tf2.xai_losses(tf.constant(importance), K, 0.8)
  ref, parts = losses.total_loss(jnp.float32(0.0), jnp.asarray(importance), k=K, rho=0.8, lam=0.0)
  np.testing.assert_allclose(float(skew_loss), parts["skew_loss"], rtol=1e-6)
  np.testing.assert_allclose(float(disorder_loss), parts["disorder_loss"], rtol=1e-6)
  np.testing.assert_allclose(float(skewness), parts["skewness"], rtol=1e-6)
  assert float(disorder_loss) > 0 and float(skew_loss) > 0


def test_tf2_quantizer_matches_jax_values_and_gradients():
  rng = np.random.default_rng(1)
  x = rng.uniform(0.0, 6.0, (2, 3, 3, 4)).astype(np.float32)
  q = rng.normal(0.0, 1.0, 8).astype(np.float32)
  cot = rng.normal(size=x.shape).astype(np.float32)
  x_t, q_t = tf.Variable(x), tf.Variable(q.reshape(1, 8))
  with tf.GradientTape() as tape:
    y_t, idx_t = agile_tf2.soft_quantize(x_t, 6.0 * tf.sigmoid(q_t))
    loss_t = tf.reduce_sum(y_t * cot)
  gx_t, gq_t = tape.gradient(loss_t, [x_t, q_t])

  def f(x, q):
    y, _ = models.quantize(x, models.centroids_from_logits(q))
    return (y * cot).sum()

  y, idx = models.quantize(x, models.centroids_from_logits(q))
  gx, gq = jax.grad(f, argnums=(0, 1))(x, q)
  np.testing.assert_array_equal(idx_t.numpy(), idx)
  np.testing.assert_allclose(y_t.numpy(), y, rtol=1e-6)
  np.testing.assert_allclose(gx_t.numpy(), gx, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(gq_t.numpy().reshape(-1), gq, rtol=1e-4, atol=1e-6)


def test_tf2_integrated_gradients_match_jax():
  rng = np.random.default_rng(2)
  f = rng.uniform(0.0, 6.0, (3, 4, 4, 24)).astype(np.float32)
  labels = np.array([0, 2, 1], np.int32)
  evaluator = small_evaluator(4, 3)
  (kernel, bias), (dense, dense_bias) = (evaluator.layers[1].get_weights(), evaluator.layers[3].get_weights())

  def eval_loss(x):
    h = jax.nn.silu(
      jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
      + bias
    )
    logp = jax.nn.log_softmax(h.mean(axis=(1, 2)) @ dense + dense_bias)
    return -jnp.take_along_axis(logp, labels[:, None], axis=-1).mean()

  got = agile_tf2.integrated_gradients(evaluator, tf.constant(f), tf.constant(labels)).numpy()
  np.testing.assert_allclose(
    got, xai.integrated_gradients(eval_loss, jnp.asarray(f), 2), rtol=1e-4, atol=1e-7
  )
