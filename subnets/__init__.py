"""subnets: REDS, nested subnetworks from an iterative knapsack, permuted into channel prefixes.

Public API (re-exports only): the knapsack (`nested_widths`, `solve_nested`), the models and
their MAC cost model, the unit surgery (`slice_variables`, `permute_variables`), the
switching runtime and the pipeline steps. See docs/subnets.md.
"""

from subnets.knapsack import InfeasibleError, Solution, check_nested, nested_widths, solve_nested
from subnets.models import ChainCosts, ModelConfig, RedsNet, chain_costs, param_count, preset
from subnets.runtime import SubnetRuntime, predict_fn
from subnets.surgery import (
  magnitude_scores,
  permute_variables,
  random_scores,
  slice_variables,
  sort_permutations,
  taylor_scores,
  zero_dropped,
)

__all__ = [
  "ChainCosts",
  "InfeasibleError",
  "ModelConfig",
  "RedsNet",
  "Solution",
  "SubnetRuntime",
  "chain_costs",
  "check_nested",
  "magnitude_scores",
  "nested_widths",
  "param_count",
  "permute_variables",
  "predict_fn",
  "preset",
  "random_scores",
  "slice_variables",
  "solve_nested",
  "sort_permutations",
  "taylor_scores",
  "zero_dropped",
]
