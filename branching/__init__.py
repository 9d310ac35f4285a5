"""branching: NN-Stretch, multi-branch CNNs for parallel inference on heterogeneous processors.

Public API:
  branching.config.load(path) -> NetConfig            the published YAML schema, validated
  branching.flops.count(config, image_size=224)        {"macs", "params"} (+ pycls figures)
  branching.costmodel.predict(config, processors)      milliseconds on calibrated processors
  branching.search.stretch(config, processors, ...)    a stretched NetConfig
"""

from branching import config, costmodel, flops, search
from branching.config import NetConfig, load
from branching.models import AnyNet

__all__ = ["AnyNet", "NetConfig", "config", "costmodel", "flops", "load", "search"]
