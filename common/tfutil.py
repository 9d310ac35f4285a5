"""TensorFlow helpers: TF is used only for export and TFDS, never for compute."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def hide_gpus_from_tf() -> None:
  """Hides every GPU from TensorFlow so it never grabs accelerator memory from JAX."""
  import tensorflow as tf

  try:
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError:  # already initialised: devices cannot change any more
    pass
