"""DS-CNN-S (vision) on CIFAR-10 through TFDS, as in the paper's Table 8.

  edgeinfer subnets export --config=subnets/configs/cifar10.py --workdir=runs/subnets_cifar10

Needs `cifar10` prepared in the TFDS directory. Hours on CPU. For Fashion-MNIST:
--config.data.name=fashion_mnist (images repeated to 3 channels, 28x28 -> 32x32).
"""

from common import config as config_lib
from subnets.configs import default


def get_config(arg=None):
  config_lib.variant(arg, ())
  c = default.get_config()
  c.data.name = "cifar10"
  c.pretrain.update(epochs=60, batch_size=128)
  c.finetune.update(epochs=60, batch_size=128, bn_epochs=10)
  return c
