"""The paper's KWS setup: DS-CNN-S on Google Speech Commands (TFDS, 49x10 MFCCs, 12 classes).

  edgeinfer subnets export --config=subnets/configs/kws_ds_cnn_s.py --workdir=runs/subnets_kws \
      --config.data.data_dir=/path/to/tensorflow_datasets

Needs `speech_commands` prepared in the TFDS directory (no downloads here). Hours on CPU.
Other KWS models: --config.model.preset=dnn_s|dnn_l|cnn_s|cnn_l|ds_cnn_l.
"""

from common import config as config_lib
from subnets.configs import default


def get_config(arg=None):
  config_lib.variant(arg, ())
  c = default.get_config()
  c.data.name = "speech_commands"
  c.data.image_size = 0
  c.model.preset = "ds_cnn_s"
  c.model.activation = ""
  c.pretrain.update(epochs=30, lr=1e-3, batch_size=100, augment=False)
  c.finetune.update(epochs=100, lr=1e-3, batch_size=100, augment=False, bn_epochs=10, bn_lr=5e-4)
  c.baselines.scratch_epochs = 30
  return c
