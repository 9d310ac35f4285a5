"""The KWS MFCC front end: 49 frames x 10 coefficients per 1 s clip, as in Hello Edge."""

import numpy as np

from subnets import audio


def test_mfcc_shape_and_content():
  t = np.arange(16_000) / 16_000
  tone = (0.5 * np.sin(2 * np.pi * 440 * t) * 32767).astype(np.int16)
  noise = (np.random.default_rng(0).normal(size=12_000) * 3000).astype(np.int16)  # short clip: padded
  x = np.zeros((2, 16_000), np.int16)
  x[0], x[1, :12_000] = tone, noise
  f = audio.mfcc(x)
  assert f.shape == (2, 49, 10, 1) and f.dtype == np.float32 and np.isfinite(f).all()
  # the stationary tone has (nearly) constant frames; the noise then silence does not
  assert f[0, 5:40].std(axis=0).mean() < 0.1 * f[1].std(axis=0).mean()
  # the padded silence at the end of the noise clip gives the log floor in c0
  assert f[1, -5:, 0, 0].mean() < f[1, :20, 0, 0].mean()


def test_speech_commands_loader_under_tfds_mock_data():
  import tensorflow_datasets as tfds

  with tfds.testing.mock_data(num_examples=6):
    train, test = audio.load_speech_commands(limit=6)
  assert train.images.shape == (6, 49, 10, 1) and test.images.shape == (6, 49, 10, 1)
  assert train.num_classes == 12 and train.labels.dtype == np.int32
  assert np.isfinite(train.images).all()


def test_unprepared_speech_commands_is_one_data_error(tmp_path):
  import pytest

  from common.errors import DataError

  with pytest.raises(DataError, match="'speech_commands' is not prepared") as info:
    audio.load_speech_commands(data_dir=str(tmp_path))
  assert "download_and_prepare" in str(info.value)
