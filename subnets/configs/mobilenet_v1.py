"""MobileNetV1 (alpha 0.25) with the optional peak-memory bound of the TMC version, on digits at 32x32.

  edgeinfer subnets knapsack --config=subnets/configs/mobilenet_v1.py --workdir=runs/subnets_mbv1

knapsack.peak_bytes caps every prunable layer's largest float32 activation map (bytes; the
dense model's is 16 KB at 32x32, the fixed input image 12 KB). Widths in multiples of 8
(granularity 8): 14 layers at full granularity leave HiGHS without an incumbent in 60 s,
at 8 each budget solves to optimality in about 2 s.
Visual Wake Words is not in TFDS; any TFDS image set works through data.name.
"""

from common import config as config_lib
from subnets.configs import default


def get_config(arg=None):
  config_lib.variant(arg, ())
  c = default.get_config()
  c.model.preset = "mobilenet_v1"
  c.model.activation = ""
  c.knapsack.peak_bytes = 12_000.0
  c.knapsack.granularity = 8
  c.knapsack.min_width = 2
  return c
