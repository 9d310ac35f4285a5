"""Data sets by name, batch iteration, normalisation and jittable augmentation.

`digits` is the embedded default: the 1,797 real 8x8 handwritten digits that
scikit-learn ships, resized bilinearly to 32x32x3 and split 80/20, stratified,
with a fixed seed. It needs no network. Every other name goes through
tensorflow-datasets, read from `data_dir` (or the TFDS cache); when the data is
not there, `DataError` says how to prepare it.

Images are returned as float32 in [0, 1], NHWC; labels as int32.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np

from common.errors import DataError

DIGITS_SPLIT_SEED = 0


@dataclasses.dataclass(frozen=True)
class Dataset:
  """An in-memory data set split.

  Attributes:
    images: float32 [N, H, W, C] in [0, 1].
    labels: int32 [N].
    num_classes: number of classes.
    name: data set name.
  """

  images: np.ndarray
  labels: np.ndarray
  num_classes: int
  name: str

  def __len__(self) -> int:
    return int(self.labels.shape[0])

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return tuple(self.images.shape[1:])

  def take(self, n: int) -> Dataset:
    """The first `n` examples (all if n is larger)."""
    return dataclasses.replace(self, images=self.images[:n], labels=self.labels[:n])


def resize_np(images: np.ndarray, size: int) -> np.ndarray:
  """Bilinear resize of [N, H, W, C] images to [N, size, size, C]."""
  n, _, _, c = images.shape
  out = jax.image.resize(jnp.asarray(images), (n, size, size, c), method="bilinear")
  return np.asarray(out, dtype=np.float32)


_resize_np = resize_np  # the name of earlier callers


def load_digits(image_size: int = 32, test_fraction: float = 0.2) -> tuple[Dataset, Dataset]:
  """scikit-learn's digits, resized to image_size x image_size x 3, split stratified."""
  from sklearn.datasets import load_digits as _sk_load_digits
  from sklearn.model_selection import train_test_split

  bunch = _sk_load_digits()
  images = (bunch.images.astype(np.float32) / 16.0)[..., None]  # [N, 8, 8, 1] in [0, 1]
  labels = bunch.target.astype(np.int32)
  idx = np.arange(labels.shape[0])
  tr_idx, te_idx = train_test_split(
    idx, test_size=test_fraction, stratify=labels, random_state=DIGITS_SPLIT_SEED
  )
  tr_idx, te_idx = np.sort(tr_idx), np.sort(te_idx)
  resized = np.clip(resize_np(images, image_size), 0.0, 1.0)
  rgb = np.repeat(resized, 3, axis=-1)
  train = Dataset(rgb[tr_idx], labels[tr_idx], 10, "digits")
  test = Dataset(rgb[te_idx], labels[te_idx], 10, "digits")
  return train, test


def how_to_prepare(name: str, data_dir: str | None) -> str:
  """The DataError message for a TFDS data set that is not prepared in `data_dir`."""
  where = data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"
  return (
    f"data set {name!r} is not prepared in {where}. Prepare it on a machine with network "
    f'access with `python -c "import tensorflow_datasets as tfds; '
    f"tfds.builder('{name}', data_dir='{where}').download_and_prepare()\"` "
    f"and copy the folder here, or pass --config.data_dir (or data.data_dir) pointing at a prepared copy; "
    f"use name='digits' for the embedded data set that needs no download."
  )


def tfds_examples(name: str, split: str, data_dir: str | None, limit: int | None) -> tuple[list, list, int]:
  """(inputs, labels, number of classes) of the first `limit` examples of a prepared TFDS split.

  Raises:
    DataError: the data set is unknown, not prepared in `data_dir` (the message says how to
      prepare it), or the split is empty.
  """
  import tensorflow_datasets as tfds

  from common.tfutil import hide_gpus_from_tf

  hide_gpus_from_tf()
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise DataError(f"unknown data set {name!r}: {e}") from None
  try:
    ds = builder.as_dataset(split=split, as_supervised=True, shuffle_files=False)
  except AssertionError:
    raise DataError(how_to_prepare(name, data_dir)) from None
  except Exception as e:  # noqa: BLE001 - TFDS raises many types for missing data
    if "download_and_prepare" in str(e) or "not found" in str(e).lower():
      raise DataError(how_to_prepare(name, data_dir)) from None
    raise
  num_classes = builder.info.features["label"].num_classes
  inputs, labels = first_examples(ds, limit)
  if not inputs:
    raise DataError(f"data set {name!r} split {split!r} is empty in {data_dir}")
  return inputs, labels, int(num_classes)


def first_examples(ds, limit: int | None) -> tuple[list, list]:
  """(inputs, labels) as numpy of the first `limit` (None or 0: all) (input, label) pairs of a tf.data set."""
  import tensorflow_datasets as tfds

  inputs, labels = [], []
  # Iterate (batch_size=-1 aborts under tfds.testing.mock_data).
  for i, (x, y) in enumerate(tfds.as_numpy(ds)):
    if limit and i >= limit:
      break
    inputs.append(x)
    labels.append(y)
  return inputs, labels


def _tfds_split(name: str, split: str, data_dir: str | None, limit: int | None):
  images, labels, num_classes = tfds_examples(name, split, data_dir, limit)
  x = np.stack(images)
  if x.dtype == np.uint8:
    x = x.astype(np.float32) / 255.0
  x = x.astype(np.float32)
  if x.ndim == 3:
    x = x[..., None]
  return x, np.asarray(labels, dtype=np.int32), num_classes


def load(
  name: str = "digits",
  *,
  data_dir: str | None = None,
  image_size: int | None = None,
  channels: int | None = 3,
  limit: int | None = None,
) -> tuple[Dataset, Dataset]:
  """Loads (train, test) by name.

  Args:
    name: "digits" (embedded) or a TFDS name such as "cifar10".
    data_dir: TFDS data directory; None uses TFDS_DATA_DIR or the TFDS default.
    image_size: resize images to this square size (None keeps the native size;
      digits defaults to 32).
    channels: 3 repeats grey images to RGB; None keeps the native channels.
    limit: read at most this many examples per split (for smoke runs); None or 0 reads them all,
      as `data.limit = 0` means in every technique's config.

  Raises:
    DataError: the data set is unknown or not prepared.
  """
  if name == "digits":
    train, test = load_digits(image_size or 32)
    if limit:
      train, test = train.take(limit), test.take(limit)
    return train, test
  x_tr, y_tr, k = _tfds_split(name, "train", data_dir, limit)
  x_te, y_te, _ = _tfds_split(name, "test", data_dir, limit)
  out = []
  for x, y in ((x_tr, y_tr), (x_te, y_te)):
    if image_size is not None and x.shape[1] != image_size:
      x = resize_np(x, image_size)
    if channels == 3 and x.shape[-1] == 1:
      x = np.repeat(x, 3, axis=-1)
    out.append(Dataset(x, y, k, name))
  return out[0], out[1]


# ---------------------------------------------------------------- iteration


def num_batches(n: int, batch_size: int, *, drop_last: bool) -> int:
  return n // batch_size if drop_last else -(-n // batch_size)


def batches(
  ds: Dataset,
  batch_size: int,
  *,
  key: jax.Array | None = None,
  drop_last: bool = True,
  rows: tuple[int, int] | None = None,
) -> Iterator[dict[str, np.ndarray]]:
  """Yields {"image", "label", "mask"} batches over one epoch.

  Args:
    ds: the data set.
    batch_size: examples per batch.
    key: shuffles the order when given (one permutation per epoch: pass
      `fold_in(key, epoch)`); None keeps the stored order.
    drop_last: drop the last partial batch; otherwise pad it by repeating the
      first examples and mark the padding with mask == 0.
    rows: (process index, process count): yield only this process's equal share
      of every global batch (its contiguous block of rows), for multi-host runs.
  """
  if batch_size <= 0:
    raise DataError(f"batch_size = {batch_size}: must be positive")
  n = len(ds)
  if drop_last and n < batch_size:
    raise DataError(
      f"data set {ds.name!r} has {n} examples, fewer than batch_size = {batch_size}; "
      "lower the batch size or pass drop_last=False"
    )
  if rows is not None and batch_size % rows[1]:
    raise DataError(f"batch size {batch_size} does not divide over the {rows[1]} processes")
  order = np.arange(n) if key is None else np.asarray(jax.random.permutation(key, n))
  for b in range(num_batches(n, batch_size, drop_last=drop_last)):
    idx = order[b * batch_size : (b + 1) * batch_size]
    mask = np.ones(batch_size, np.float32)
    if idx.shape[0] < batch_size:
      pad = batch_size - idx.shape[0]
      mask[idx.shape[0] :] = 0.0
      idx = np.concatenate([idx, np.resize(order, pad)])
    if rows is not None:
      per = batch_size // rows[1]
      idx, mask = idx[rows[0] * per : (rows[0] + 1) * per], mask[rows[0] * per : (rows[0] + 1) * per]
    yield {"image": ds.images[idx], "label": ds.labels[idx], "mask": mask}


# ---------------------------------------------------------------- transforms


def channel_stats(ds: Dataset) -> tuple[np.ndarray, np.ndarray]:
  """Per-channel mean and standard deviation of a data set."""
  return ds.images.mean(axis=(0, 1, 2)), ds.images.std(axis=(0, 1, 2)) + 1e-6


def normalize(x: jax.Array, mean, std) -> jax.Array:
  """(x - mean) / std per channel."""
  return (x - jnp.asarray(mean, x.dtype)) / jnp.asarray(std, x.dtype)


def random_flip(key: jax.Array, x_BHWC: jax.Array) -> jax.Array:
  """Flips each image left-right with probability 1/2."""
  flip = jax.random.bernoulli(key, 0.5, (x_BHWC.shape[0], 1, 1, 1))
  return jnp.where(flip, x_BHWC[:, :, ::-1, :], x_BHWC)


def pad_and_crop(key: jax.Array, x_BHWC: jax.Array, pad: int = 4) -> jax.Array:
  """Zero-pads by `pad` and crops back at a random offset per image."""
  b, h, w, c = x_BHWC.shape
  padded = jnp.pad(x_BHWC, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  offsets = jax.random.randint(key, (b, 2), 0, 2 * pad + 1)

  def crop(img, off):
    return jax.lax.dynamic_slice(img, (off[0], off[1], 0), (h, w, c))

  return jax.vmap(crop)(padded, offsets)


def resize(x_BHWC: jax.Array, size: int | tuple[int, int]) -> jax.Array:
  """Bilinear resize to `size` (an int for square)."""
  hw = (size, size) if isinstance(size, int) else tuple(size)
  b, _, _, c = x_BHWC.shape
  return jax.image.resize(x_BHWC, (b, *hw, c), method="bilinear")


def augment(key: jax.Array, x_BHWC: jax.Array, *, flip: bool = True, pad: int = 4) -> jax.Array:
  """Random flip (optional) then pad-and-crop (pad > 0); jittable."""
  k_flip, k_crop = jax.random.split(key)
  if flip:
    x_BHWC = random_flip(k_flip, x_BHWC)
  if pad > 0:
    x_BHWC = pad_and_crop(k_crop, x_BHWC, pad)
  return x_BHWC
