"""common.data: the embedded digits set, the TFDS path under mock data, iteration, augmentation."""

import numpy as np
import pytest

from common import data
from common.errors import DataError


@pytest.fixture(scope="module")
def digits():
  return data.load("digits")


def test_digits_shapes_and_dtypes(digits):
  train, test = digits
  assert train.images.shape == (1437, 32, 32, 3) and test.images.shape == (360, 32, 32, 3)
  assert train.images.dtype == np.float32 and train.labels.dtype == np.int32
  assert 0.0 <= train.images.min() and train.images.max() <= 1.0
  assert train.num_classes == 10
  # Grey digits repeated to RGB.
  np.testing.assert_array_equal(train.images[..., 0], train.images[..., 2])


def test_digits_split_is_deterministic_and_disjoint(digits):
  train, test = digits
  train2, test2 = data.load("digits")
  np.testing.assert_array_equal(train.labels, train2.labels)
  np.testing.assert_array_equal(test.images, test2.images)
  from sklearn.datasets import load_digits

  raw = load_digits()
  assert len(train) + len(test) == raw.target.shape[0]


def test_digits_split_is_stratified(digits):
  train, test = digits
  frac_tr = np.bincount(train.labels, minlength=10) / len(train)
  frac_te = np.bincount(test.labels, minlength=10) / len(test)
  np.testing.assert_allclose(frac_tr, frac_te, atol=0.01)


def test_digits_images_match_their_labels(digits):
  # Each 32x32 image is the bilinear resize of one of scikit-learn's 8x8 digits, with its label.
  from sklearn.datasets import load_digits

  train, _ = digits
  raw = load_digits()
  raw32 = np.clip(data._resize_np(raw.images.astype(np.float32)[..., None] / 16.0, 32), 0, 1)
  dist = np.abs(train.images[:40, None, :, :, 0] - raw32[None, :, :, :, 0]).max(axis=(2, 3))
  match = dist.argmin(axis=1)
  assert dist.min(axis=1).max() < 1e-6
  np.testing.assert_array_equal(raw.target[match], train.labels[:40])


def test_batches_drop_and_pad(digits):
  train, _ = digits
  ds = train.take(10)
  dropped = list(data.batches(ds, 4, drop_last=True))
  assert len(dropped) == 2 and all(b["image"].shape == (4, 32, 32, 3) for b in dropped)
  padded = list(data.batches(ds, 4, drop_last=False))
  assert len(padded) == 3
  np.testing.assert_array_equal(padded[-1]["mask"], [1, 1, 0, 0])
  seen = np.concatenate([b["label"][b["mask"] > 0] for b in padded])
  np.testing.assert_array_equal(seen, ds.labels)
  # A batch larger than the whole data set is still full-sized, padding marked.
  (big,) = list(data.batches(ds.take(3), 8, drop_last=False))
  assert big["image"].shape[0] == 8 and big["mask"].sum() == 3


def test_batches_shuffle_depends_on_key(digits):
  import jax

  train, _ = digits
  a = next(data.batches(train, 32, key=jax.random.key(0)))["label"]
  b = next(data.batches(train, 32, key=jax.random.key(0)))["label"]
  c = next(data.batches(train, 32, key=jax.random.key(1)))["label"]
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)


def test_batch_size_errors(digits):
  train, _ = digits
  with pytest.raises(DataError, match="batch_size"):
    next(data.batches(train.take(3), 4, drop_last=True))
  with pytest.raises(DataError, match="positive"):
    next(data.batches(train, 0))


def test_augmentation_is_jittable_and_correct():
  import jax
  import jax.numpy as jnp

  x = jnp.arange(2 * 4 * 4 * 1, dtype=jnp.float32).reshape(2, 4, 4, 1)
  out = jax.jit(lambda k, v: data.augment(k, v, flip=True, pad=1))(jax.random.key(0), x)
  assert out.shape == x.shape
  # pad-and-crop with pad 0 is the identity; flip is an exact mirror.
  np.testing.assert_array_equal(data.pad_and_crop(jax.random.key(1), x, 0), x)
  flipped = data.random_flip(jax.random.key(2), x)
  for i in range(2):
    assert np.array_equal(flipped[i], x[i]) or np.array_equal(flipped[i], x[i, :, ::-1])
  np.testing.assert_allclose(data.normalize(jnp.ones((1, 2, 2, 3)), (1, 1, 1), (2, 2, 2)), 0.0)


def test_tfds_name_under_mock_data():
  import tensorflow_datasets as tfds

  with tfds.testing.mock_data(num_examples=12):
    train, test = data.load("cifar10")
  assert train.images.shape == (12, 32, 32, 3) and train.images.dtype == np.float32
  assert train.num_classes == 10 and 0.0 <= train.images.min() <= train.images.max() <= 1.0
  with tfds.testing.mock_data(num_examples=6):
    train, _ = data.load("fashion_mnist", image_size=32)
  assert train.images.shape == (6, 32, 32, 3)


def test_missing_tfds_data_raises_project_error(tmp_path):
  with pytest.raises(DataError, match="not prepared") as info:
    data.load("cifar10", data_dir=str(tmp_path))
  assert "download_and_prepare" in str(info.value)


def test_limit_zero_reads_every_example(digits):
  """`data.limit = 0` means every example in every technique's config (coinfer's None too)."""
  train, test = digits
  for limit in (0, None):
    tr, te = data.load("digits", limit=limit)
    assert (len(tr), len(te)) == (len(train), len(test))
  tr, te = data.load("digits", limit=5)
  assert (len(tr), len(te)) == (5, 5)
