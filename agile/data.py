"""Data sets and the per-data-set preprocessing of the original recipe.

`digits` (embedded) and the TFDS sets (cifar10, cifar100, svhn_cropped) load
through `common.data.load`; Tiny-ImageNet-200 loads from a local image folder
with `tfds.folder_dataset.ImageFolder` (layout `root/train/<class>/*.JPEG`,
`root/test/<class>/*.JPEG`; `prepare_tiny_imagenet` regroups the official
download into that layout).

Preprocessing, per the original: normalise, augment (train only), then resize
bilinearly to the network input (32 -> 96, or 64 -> 128).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from common import data as data_lib
from common.errors import DataError

# name -> (mean, std, flip, pad): the original's normalisation and augmentation.
RECIPES = {
  "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010), True, 4),
  "cifar100": ((0.507, 0.487, 0.441), (0.267, 0.256, 0.276), True, 4),
  "svhn_cropped": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5), True, 4),  # 2x - 1
  "imagenet200": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5), True, 0),  # 2x - 1, flip only
  "digits": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5), False, 2),  # digits are not flip-invariant
}
DATASETS = tuple(RECIPES)


@dataclasses.dataclass(frozen=True)
class Preprocess:
  """Normalise -> (augment) -> resize, jittable.

  Attributes:
    mean, std: per-channel normalisation.
    flip: random horizontal flips in training.
    pad: pad-and-random-crop margin in training (0 = none).
    input_size: the network's square input size after resizing.
  """

  mean: tuple[float, float, float]
  std: tuple[float, float, float]
  flip: bool
  pad: int
  input_size: int

  def __call__(self, x_BHWC: jax.Array, rng: jax.Array | None = None) -> jax.Array:
    x = data_lib.normalize(jnp.asarray(x_BHWC, jnp.float32), self.mean, self.std)
    if rng is not None and (self.flip or self.pad):
      x = data_lib.augment(rng, x, flip=self.flip, pad=self.pad)
    if x.shape[1] != self.input_size or x.shape[2] != self.input_size:
      x = data_lib.resize(x, self.input_size)
    return x


def make_preprocess(name: str, input_size: int) -> Preprocess:
  mean, std, flip, pad = RECIPES[name]
  return Preprocess(tuple(mean), tuple(std), flip, pad, int(input_size))


def load_image_folder(root: str | os.PathLike, *, image_size: int = 64, limit: int | None = None):
  """(train, test) Datasets from `root/{train,test}/<class>/<image>` via TFDS ImageFolder."""
  import tensorflow_datasets as tfds

  from common.tfutil import hide_gpus_from_tf

  hide_gpus_from_tf()
  root = Path(root)
  for split in ("train", "test"):
    if not (root / split).is_dir():
      raise DataError(
        f"image folder {root} has no {split}/ directory; lay it out as {root}/train/<class>/*.JPEG "
        f"and {root}/test/<class>/*.JPEG (agile.data.prepare_tiny_imagenet does this for the "
        "official tiny-imagenet-200 download)"
      )
  builder = tfds.folder_dataset.ImageFolder(str(root))
  num_classes = builder.info.features["label"].num_classes
  out = []
  for split in ("train", "test"):
    images, labels = data_lib.first_examples(builder.as_dataset(split=split, as_supervised=True), limit)
    images = [np.repeat(img, 3, axis=-1) if img.shape[-1] == 1 else img for img in images]
    if not images:
      raise DataError(f"image folder {root}/{split} holds no images")
    x = np.stack(images).astype(np.float32) / 255.0
    if x.shape[1] != image_size:
      x = data_lib.resize_np(x, image_size)
    out.append(data_lib.Dataset(x, np.asarray(labels, np.int32), int(num_classes), "imagenet200"))
  return out[0], out[1]


def prepare_tiny_imagenet(raw_dir: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
  """Regroups the official tiny-imagenet-200 folder into ImageFolder's layout with symlinks.

  train/<wnid>/images/*.JPEG -> out/train/<wnid>/; val/images + val_annotations.txt
  -> out/test/<wnid>/ (the original uses the validation split as its test set).
  """
  raw, out = Path(raw_dir), Path(out_dir)
  ann = raw / "val" / "val_annotations.txt"
  if not (raw / "train").is_dir() or not ann.exists():
    raise DataError(f"{raw} is not a tiny-imagenet-200 folder (needs train/ and val/val_annotations.txt)")
  for cls_dir in sorted((raw / "train").iterdir()):
    dst = out / "train" / cls_dir.name
    dst.mkdir(parents=True, exist_ok=True)
    for img in (cls_dir / "images").glob("*.JPEG"):
      if not (dst / img.name).exists():
        (dst / img.name).symlink_to(img.resolve())
  for line in ann.read_text().splitlines():
    fname, wnid = line.split("\t")[:2]
    dst = out / "test" / wnid
    dst.mkdir(parents=True, exist_ok=True)
    if not (dst / fname).exists():
      (dst / fname).symlink_to((raw / "val" / "images" / fname).resolve())
  return out


def load(name: str, *, data_dir: str | None = None, limit: int | None = None):
  """(train, test) for one of DATASETS; images float32 in [0, 1] at their native size."""
  if name not in RECIPES:
    raise DataError(f"data set {name!r} is not supported by agile; use one of {list(DATASETS)}")
  if name == "imagenet200":
    if not data_dir:
      raise DataError(
        "imagenet200 needs --config.data_dir pointing at an ImageFolder layout (see docs/agile.md)"
      )
    return load_image_folder(data_dir, limit=limit)
  return data_lib.load(name, data_dir=data_dir, limit=limit)
