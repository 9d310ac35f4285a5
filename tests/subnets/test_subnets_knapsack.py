"""The nested knapsack: brute-force optimum, nesting, infeasibility, peak memory."""

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.errors import InfeasibleError
from subnets import knapsack


def _instance(seed, units=(3, 4, 3)):
  rng = np.random.default_rng(seed)
  scores = [np.sort(rng.gamma(0.7, 1.0, u))[::-1] for u in units]
  pair = list(rng.integers(1, 6, len(units)).astype(float))
  unit = list(rng.integers(0, 8, len(units)).astype(float))
  return scores, pair, unit


def _brute(scores, pair, unit, cap, *, in_width, lower):
  best, arg = -1.0, None
  for ws in itertools.product(*[range(lo, len(s) + 1) for s, lo in zip(scores, lower, strict=False)]):
    if knapsack.chain_cost(ws, pair, unit, in_width=in_width) <= cap + 1e-9:
      v = knapsack.chain_value(ws, scores)
      if v > best + 1e-12:
        best, arg = v, ws
  return best, arg


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_nested_optimum_equals_brute_force(seed):
  scores, pair, unit = _instance(seed)
  budgets = [0.3, 0.55, 0.8]
  in_width = 2
  units = [len(s) for s in scores]
  dense = knapsack.chain_cost(units, pair, unit, in_width=in_width)
  lower = [1, 1, 1]
  try:
    sols = knapsack.solve_nested(scores, pair, unit, budgets, in_width=in_width)
  except InfeasibleError:
    assert knapsack.chain_cost(lower, pair, unit, in_width=in_width) > budgets[0] * dense
    return
  for b, s in zip(budgets, sols, strict=False):
    best, _ = _brute(scores, pair, unit, b * dense, in_width=in_width, lower=lower)
    assert s.value == pytest.approx(best, rel=1e-9, abs=1e-9)
    assert s.macs <= b * dense + 1e-6
    assert s.macs == knapsack.chain_cost(s.widths, pair, unit, in_width=in_width)
    lower = list(s.widths)
  knapsack.check_nested([s.widths for s in sols])


def test_public_api_and_nesting():
  scores, pair, unit = _instance(3, units=(6, 7, 5, 6))
  out = knapsack.nested_widths(scores, pair, unit, [0.25, 0.5, 0.75], in_width=3, min_width=2)
  assert len(out) == 3 and all(isinstance(w, list) and len(w) == 4 for w in out)
  for a, b in zip(out, out[1:], strict=False):
    assert all(x <= y for x, y in zip(a, b, strict=False))
  assert all(w >= 2 for ws in out for w in ws)


def test_single_budget_hand_case():
  # Two layers of 2 units, in_width 1, pair cost 1, unit cost 0: cost = w1 + w1*w2.
  # Scores: layer 0 [10, 1], layer 1 [5, 4]. Dense cost 2 + 4 = 6; budget 0.5 -> 3 MACs:
  # (1,1) cost 2 value 15; (1,2) cost 3 value 19; (2,1) cost 4 > 3. Best (1,2).
  out = knapsack.nested_widths(
    [np.array([10.0, 1.0]), np.array([5.0, 4.0])], [1, 1], [0, 0], [0.5], in_width=1
  )
  assert out == [[1, 2]]


def test_infeasible_budget_names_smallest_feasible():
  scores, pair, unit = _instance(1)
  units = [len(s) for s in scores]
  dense = knapsack.chain_cost(units, pair, unit, in_width=2)
  floor = knapsack.chain_cost([2, 2, 2], pair, unit, in_width=2) / dense
  with pytest.raises(InfeasibleError, match=f"smallest feasible budget is {floor:.4g}"):
    knapsack.nested_widths(scores, pair, unit, [floor * 0.9], in_width=2, min_width=2)
  # exactly the floor is feasible and returns the minimum widths
  assert knapsack.nested_widths(scores, pair, unit, [floor], in_width=2, min_width=2) == [[2, 2, 2]]


def test_peak_memory_bound_caps_widths():
  scores, pair, unit = _instance(5, units=(8, 8, 8))
  sols = knapsack.solve_nested(
    scores, pair, unit, [0.5, 0.9], in_width=1, act_bytes=[10.0, 20.0, 5.0], peak_bytes=100.0
  )
  for s in sols:
    assert s.widths[0] <= 10 and s.widths[1] <= 5 and s.widths[2] <= 8
  with pytest.raises(InfeasibleError, match="peak-memory"):
    knapsack.solve_nested(
      scores, pair, unit, [0.5], in_width=1, act_bytes=[10.0, 200.0, 5.0], peak_bytes=100.0
    )


def test_pair_scores_enter_the_objective():
  # Without pair scores layer 1 keeps its better unit only; a 2-D bonus on (2, 2) flips it.
  s0, s1 = np.array([1.0, 0.0]), np.array([1.0, 0.0])
  ps = np.array([[0.0, 0.0], [0.0, 50.0]])
  sol = knapsack.solve_nested([s0, s1], [1.0, 1.0], [0.0, 0.0], [1.0], in_width=1, pair_scores=[None, ps])
  assert sol[0].widths == (2, 2) and sol[0].value == pytest.approx(52.0)
  sol = knapsack.solve_nested([s0, s1], [1.0, 1.0], [0.0, 0.0], [0.99], in_width=1, pair_scores=[None, ps])
  assert sol[0].value == pytest.approx(2.0) and sol[0].macs <= 0.99 * 6
