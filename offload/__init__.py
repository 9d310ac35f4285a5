"""offload: image offloading under a token-bucket rate limit (MDP and DQN policies).

Qiu et al., "Adaptive Edge Offloading for Image Classification Under Rate Limit"
(EMSOFT 2022) and Chakrabarti et al., "Real-time Edge Classification: Optimal
Offloading under Token Bucket Constraints" (SEC 2021), in JAX.

Public API: `bucket.discretize`, `mdp.thresholds`, `simulate.run`, `multicam.strategies`,
`robust.study` (see docs/offload.md).
"""

from offload import bucket, data, dqn, mdp, metrics, models, multicam, robust, sequences, simulate
from offload.bucket import QPM, discretize
from offload.data import MetricsData, load_npz, prepare, synthetic
from offload.dqn import FQIConfig, Pool, q_iteration
from offload.mdp import baseline_thresholds, thresholds
from offload.models import DQNConfig, QNetwork
from offload.simulate import DQNPolicy, run

__all__ = [
  "QPM",
  "DQNConfig",
  "DQNPolicy",
  "FQIConfig",
  "MetricsData",
  "Pool",
  "QNetwork",
  "baseline_thresholds",
  "bucket",
  "data",
  "discretize",
  "dqn",
  "load_npz",
  "mdp",
  "metrics",
  "models",
  "multicam",
  "prepare",
  "q_iteration",
  "robust",
  "run",
  "sequences",
  "simulate",
  "synthetic",
  "thresholds",
]
