"""branching: NN-Stretch, multi-branch CNNs for parallel inference on heterogeneous processors.

Public API:
  branching.network.load(path) -> NetConfig            the published YAML schema, validated
  branching.flops.count(config, image_size=224)        {"macs", "params"} (+ pycls figures)
  branching.costmodel.predict(config, processors)      milliseconds on calibrated processors
  branching.search.stretch(config, processors, ...)    a stretched NetConfig
"""

from branching import costmodel, flops, network, search
from branching.models import AnyNet
from branching.network import NetConfig, load

__all__ = ["AnyNet", "NetConfig", "costmodel", "flops", "load", "network", "search"]
