"""The non-embedded data paths of agile: TFDS sets under mock data, Tiny-ImageNet from an image folder."""

from __future__ import annotations

import numpy as np
import pytest

from agile import data as agile_data
from common.errors import DataError


@pytest.mark.parametrize("name,classes", [("cifar10", 10), ("cifar100", 100), ("svhn_cropped", 10)])
def test_tfds_sets_load_and_preprocess_under_mock_data(name, classes):
  import tensorflow_datasets as tfds

  with tfds.testing.mock_data(num_examples=8):
    train, test = agile_data.load(name)
  assert train.images.shape == (8, 32, 32, 3) and test.images.shape[1:] == (32, 32, 3)
  assert train.num_classes == classes
  assert train.labels.min() >= 0 and train.labels.max() < classes
  prep = agile_data.make_preprocess(name, 96)
  x = np.asarray(prep(train.images[:4]))
  assert x.shape == (4, 96, 96, 3) and np.isfinite(x).all()
  # The recipe's normalisation: a [0, 1] image of constant v maps to (v - mean) / std per channel.
  mean, std = np.asarray(prep.mean), np.asarray(prep.std)
  const = np.full((1, 32, 32, 3), 0.25, np.float32)
  np.testing.assert_allclose(np.asarray(prep(const))[0, 10, 10], (0.25 - mean) / std, rtol=1e-5)


def _write_jpegs(folder, n, seed):
  from PIL import Image

  folder.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(seed)
  for i in range(n):
    pixels = rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(folder / f"img{seed}_{i}.JPEG", format="JPEG")


def test_tiny_imagenet_layout_loads_through_image_folder(tmp_path):
  raw = tmp_path / "tiny-imagenet-200"
  wnids = ["n01443537", "n01629819"]
  for k, w in enumerate(wnids):
    _write_jpegs(raw / "train" / w / "images", 3, seed=k)
  _write_jpegs(raw / "val" / "images", 4, seed=9)
  val_files = sorted(p.name for p in (raw / "val" / "images").iterdir())
  lines = [f"{f}\t{wnids[i % 2]}\t0\t0\t63\t63" for i, f in enumerate(val_files)]
  (raw / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")

  root = agile_data.prepare_tiny_imagenet(raw, tmp_path / "folder")
  assert sorted(p.name for p in (root / "test").iterdir()) == wnids
  assert len(list((root / "test" / wnids[0]).iterdir())) == 2
  # Running it again is a no-op, not an error (existing links are kept).
  agile_data.prepare_tiny_imagenet(raw, tmp_path / "folder")

  train, test = agile_data.load("imagenet200", data_dir=str(root))
  assert train.images.shape == (6, 64, 64, 3) and test.images.shape == (4, 64, 64, 3)
  assert train.num_classes == 2 and sorted(np.unique(train.labels)) == [0, 1]
  assert 0.0 <= train.images.min() <= train.images.max() <= 1.0
  assert train.name == "imagenet200"
  x = np.asarray(agile_data.make_preprocess("imagenet200", 128)(train.images[:2]))
  assert x.shape == (2, 128, 128, 3)


def test_image_folder_errors_name_the_problem(tmp_path):
  (tmp_path / "train").mkdir()
  with pytest.raises(DataError, match="no test/ directory"):
    agile_data.load("imagenet200", data_dir=str(tmp_path))
  with pytest.raises(DataError, match="--config.data_dir"):
    agile_data.load("imagenet200")
  with pytest.raises(DataError, match="not a tiny-imagenet-200 folder"):
    agile_data.prepare_tiny_imagenet(tmp_path / "nothing", tmp_path / "out")
  with pytest.raises(DataError, match="not supported"):
    agile_data.load("mnist")
