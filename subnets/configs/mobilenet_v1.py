"""MobileNetV1 (alpha 0.25) with the optional peak-memory bound of the TMC version, on digits at 32x32.

  python -m subnets.main knapsack --config subnets/configs/mobilenet_v1.py --workdir runs/subnets_mbv1

knapsack.peak_bytes caps every layer's largest float32 activation map (bytes).
Visual Wake Words is not in TFDS; any TFDS image set works through data.name.
"""

from subnets.configs import default


def get_config():
  c = default.get_config()
  c.model.preset = "mobilenet_v1"
  c.model.activation = ""
  c.knapsack.peak_bytes = 40_000.0
  c.knapsack.min_width = 2
  return c
