"""Google Speech Commands through TFDS with the paper's MFCC front end (Hello Edge / ARM ML-KWS).

16 kHz clips padded or cut to 1 s; power spectrogram with a 40 ms window and a
20 ms stride (49 frames); 40 mel bands (20 Hz - 4 kHz); log; DCT; the first 10
coefficients -> a [49, 10, 1] "image" per clip. TFDS `speech_commands` already
holds the 12 KWS classes (10 words, silence, unknown).
"""

from __future__ import annotations

import numpy as np

from common import data as data_lib

SAMPLE_RATE = 16_000
WINDOW, STRIDE, FFT = 640, 320, 1024
NUM_MEL, NUM_MFCC = 40, 10


def mfcc(audio_BT: np.ndarray) -> np.ndarray:
  """[B, T] int16 or float audio -> [B, 49, 10, 1] float32 MFCCs (T padded/cut to 16000)."""
  import tensorflow as tf

  from common.tfutil import hide_gpus_from_tf

  hide_gpus_from_tf()
  x = np.asarray(audio_BT)
  if x.dtype == np.int16:
    x = x.astype(np.float32) / 32768.0
  x = x.astype(np.float32)
  if x.shape[1] < SAMPLE_RATE:
    x = np.pad(x, ((0, 0), (0, SAMPLE_RATE - x.shape[1])))
  x = x[:, :SAMPLE_RATE]
  stft = tf.signal.stft(
    x, frame_length=WINDOW, frame_step=STRIDE, fft_length=FFT, window_fn=tf.signal.hann_window
  )
  power = tf.math.square(tf.abs(stft))
  mel_w = tf.signal.linear_to_mel_weight_matrix(NUM_MEL, FFT // 2 + 1, SAMPLE_RATE, 20.0, 4000.0)
  log_mel = tf.math.log(tf.tensordot(power, mel_w, 1) + 1e-6)
  coeffs = tf.signal.mfccs_from_log_mel_spectrograms(log_mel)[..., :NUM_MFCC]
  return coeffs.numpy()[..., None].astype(np.float32)


def mfcc_split(name: str, split: str, data_dir: str | None, limit: int | None) -> data_lib.Dataset:
  """The MFCC data set of one split of a TFDS audio set (clips padded or cut to 1 s)."""
  audio, labels, k = data_lib.tfds_examples(name, split, data_dir, limit)
  clips = []
  for a in audio:
    a = np.asarray(a).reshape(-1)[:SAMPLE_RATE]
    clips.append(np.pad(a, (0, SAMPLE_RATE - a.shape[0])))
  feats = np.concatenate([mfcc(np.stack(clips[i : i + 512])) for i in range(0, len(clips), 512)])
  return data_lib.Dataset(feats, np.asarray([int(y) for y in labels], np.int32), k, name)


def load_speech_commands(data_dir: str | None = None, limit: int | None = None):
  """(train, test) MFCC data sets of TFDS speech_commands."""
  return tuple(mfcc_split("speech_commands", split, data_dir, limit) for split in ("train", "test"))
