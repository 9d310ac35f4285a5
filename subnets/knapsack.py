"""The iterative, nested knapsack of REDS as a width-per-layer MILP (CVXPY + HiGHS).

A chain of L prunable layers; layer l keeps the first w_l of its U_l units
(units are sorted by importance, so a width is a prefix). With w_0 = in_width,

  MACs(w) = sum_l pair_costs[l] * w_(l-1) * w_l + unit_costs[l] * w_l,
  value(w) = sum_l sum_(k < w_l) scores[l][k]  (+ optional 2-D pair scores).

For each budget fraction b (increasing), we maximise the value subject to
MACs(w) <= b * MACs(dense), w_l >= min_width, w_l >= the previous solution's
w_l (nesting, bottom-up), and optionally w_l * act_bytes[l] <= peak_bytes.

Formulation (the digest's "better exact formulation", not the literal port):
a one-hot width choice y_l over the allowed widths of each layer and edge
variables E_l[a, b] (the joint choice of w_(l-1) = a, w_l = b) with flow
constraints (row sums = y_(l-1), column sums = y_l), which make the bilinear
MAC term and the 2-D pair scores linear. Its LP relaxation is a network-flow
polytope plus one budget row, which HiGHS closes quickly.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence

import cvxpy as cp
import numpy as np
import scipy.sparse as sp

from common.errors import ConfigError, InfeasibleError


@dataclasses.dataclass(frozen=True)
class Solution:
  """One solved budget.

  Attributes:
    budget: the budget as a fraction of the dense cost.
    widths: the width per layer.
    macs: the true cost of `widths` (recomputed, not the solver's value).
    value: the kept importance.
    solve_s: the solver's wall time (model build excluded).
    gap: HiGHS' relative MIP gap at the end (0 = proven optimal).
    status: the CVXPY status.
  """

  budget: float
  widths: tuple[int, ...]
  macs: float
  value: float
  solve_s: float
  gap: float
  status: str


def chain_cost(
  widths: Sequence[int], pair_costs: Sequence[float], unit_costs: Sequence[float], *, in_width: int
) -> float:
  """MACs of a width vector under the chain cost model."""
  total, prev = 0.0, in_width
  for w, pc, uc in zip(widths, pair_costs, unit_costs, strict=True):
    total += pc * prev * w + uc * w
    prev = w
  return float(total)


def chain_value(widths: Sequence[int], scores: Sequence[np.ndarray], pair_scores=None) -> float:
  """Kept importance of a width vector (prefixes of the sorted scores)."""
  v = sum(float(np.sum(np.asarray(s)[:w])) for s, w in zip(scores, widths, strict=True))
  if pair_scores is not None:
    for l in range(1, len(widths)):
      if pair_scores[l] is not None:
        v += float(np.sum(np.asarray(pair_scores[l])[: widths[l - 1], : widths[l]]))
  return v


def _domains(units, lo, hi, granularity):
  doms = []
  for u, a, b in zip(units, lo, hi, strict=True):
    d = [w for w in range(a, b + 1) if w % granularity == 0 or w in (a, b, u)]
    doms.append(np.asarray(sorted(set(d)), dtype=np.int64))
  return doms


def _budget_milp(scores, pair_costs, unit_costs, budget_macs: float, doms, in_width: int, pair_scores):
  """(problem, one-hot width variables per layer) of one budget: the chosen widths' prefix scores
  maximised under the MAC budget, consecutive layers' products linearised by pair variables."""
  prefix = [np.concatenate([[0.0], np.cumsum(np.asarray(s, np.float64))]) for s in scores]
  scale = max(sum(p[-1] for p in prefix), 1e-30)
  ys = [cp.Variable(len(d), boolean=True) for d in doms]
  cons = [cp.sum(y) == 1 for y in ys]
  obj = sum(prefix[l][doms[l]] / scale @ ys[l] for l in range(len(ys)))
  cost = (pair_costs[0] * in_width + unit_costs[0]) * doms[0] @ ys[0]
  cost += sum(unit_costs[l] * doms[l] @ ys[l] for l in range(1, len(ys)))
  for l in range(1, len(ys)):
    a, b = doms[l - 1], doms[l]
    na, nb = len(a), len(b)
    need_pair_score = pair_scores is not None and pair_scores[l] is not None
    if pair_costs[l] == 0 and not need_pair_score:
      continue
    e = cp.Variable(na * nb, nonneg=True)  # E[i, j] at i * nb + j
    rows = sp.kron(sp.eye(na), np.ones((1, nb)), format="csr")
    cols = sp.kron(np.ones((1, na)), sp.eye(nb), format="csr")
    cons += [rows @ e == ys[l - 1], cols @ e == ys[l]]
    cost += pair_costs[l] * np.outer(a, b).ravel() @ e
    if need_pair_score:
      ps = np.asarray(pair_scores[l], np.float64)
      p2 = np.zeros((ps.shape[0] + 1, ps.shape[1] + 1))
      p2[1:, 1:] = ps.cumsum(0).cumsum(1)
      obj = obj + (p2[np.ix_(a, b)].ravel() / scale) @ e
  # Normalise the budget row so HiGHS' tolerances act on O(1) numbers.
  cscale = max(float(budget_macs), 1.0)
  cons.append(cost / cscale <= budget_macs / cscale + 1e-9)
  return cp.Problem(cp.Maximize(obj), cons), ys


def solve_budget(
  scores: Sequence[np.ndarray],
  pair_costs: Sequence[float],
  unit_costs: Sequence[float],
  budget_macs: float,
  *,
  in_width: int,
  lower: Sequence[int],
  upper: Sequence[int],
  pair_scores: Sequence[np.ndarray | None] | None = None,
  granularity: int = 1,
  time_limit: float | None = None,
) -> tuple[tuple[int, ...], float, float, str]:
  """One MILP: the best widths with lower[l] <= w_l <= upper[l] and cost <= budget_macs.

  Returns (widths, solve seconds, relative gap, status). Raises InfeasibleError.
  """
  doms = _domains([len(s) for s in scores], lower, upper, granularity)
  prob, ys = _budget_milp(scores, pair_costs, unit_costs, budget_macs, doms, in_width, pair_scores)
  opts = {"mip_rel_gap": 0.0, "mip_abs_gap": 1e-9}
  if time_limit is not None:
    opts["time_limit"] = float(time_limit)
  t0 = time.perf_counter()
  try:
    prob.solve(solver=cp.HIGHS, **opts)
  except cp.error.SolverError as e:
    raise InfeasibleError(f"HiGHS failed on the knapsack ({e}); raise the budget or the time limit") from e
  solve_s = time.perf_counter() - t0
  if prob.status in (cp.INFEASIBLE, cp.INFEASIBLE_INACCURATE) or ys[0].value is None:
    raise InfeasibleError(
      f"the knapsack with budget {budget_macs:.0f} MACs found no solution (status {prob.status}); "
      "raise the budget or the solver time limit"
    )
  widths = tuple(int(d[int(np.argmax(y.value))]) for d, y in zip(doms, ys, strict=True))
  onehot = all(abs(float(np.sum(y.value)) - 1.0) < 1e-6 and float(np.max(y.value)) > 0.5 for y in ys)
  if not onehot or chain_cost(widths, pair_costs, unit_costs, in_width=in_width) > budget_macs * (1 + 1e-9):
    raise InfeasibleError(
      f"HiGHS stopped (status {prob.status}) after {solve_s:.1f} s without a feasible width vector; "
      "raise knapsack.time_limit or knapsack.granularity"
    )
  info = prob.solver_stats.extra_stats
  gap = float(getattr(info, "mip_gap", 0.0)) if info is not None else 0.0
  if not np.isfinite(gap) or prob.status == cp.OPTIMAL:
    gap = 0.0 if prob.status == cp.OPTIMAL else float("inf")
  return widths, solve_s, gap, prob.status


def check_budgets(
  units: Sequence[int],
  pair_costs: Sequence[float],
  unit_costs: Sequence[float],
  budgets: Sequence[float],
  *,
  in_width: int,
  min_width: int | Sequence[int] = 1,
  max_width: Sequence[int] | None = None,
  act_bytes: Sequence[float] | None = None,
  peak_bytes: float | None = None,
) -> tuple[list[int], list[int]]:
  """The nested knapsack's infeasibilities that need no solve, found before anything is written.

  The budgets must be increasing positive fractions, every layer must reach its minimum width
  under the peak-memory bound, and the smallest budget must afford the minimum widths (then every
  larger budget affords the subnetwork solved for the one below it, so no other budget is).

  Returns:
    (lower, upper): the width bounds of each layer for the first budget.

  Raises:
    ConfigError: the budgets are not increasing positive fractions, or the cost lists disagree.
    InfeasibleError: a bound or the first budget cannot be met (the message names the smallest
      feasible budget fraction).
  """
  n = len(units)
  if not (len(pair_costs) == len(unit_costs) == n):
    raise ConfigError(
      f"scores, pair_costs, unit_costs have lengths {n}, {len(pair_costs)}, {len(unit_costs)}"
    )
  budgets = [float(b) for b in budgets]
  increasing = all(b2 >= b1 for b1, b2 in zip(budgets, budgets[1:], strict=False))
  if not budgets or any(b <= 0 for b in budgets) or not increasing:
    raise ConfigError(f"budgets = {budgets}: must be positive fractions in increasing order")
  mins = [min_width] * n if isinstance(min_width, int) else list(min_width)
  upper = list(units) if max_width is None else [min(u, m) for u, m in zip(units, max_width, strict=True)]
  if peak_bytes is not None:
    if act_bytes is None:
      raise ConfigError("peak_bytes needs act_bytes (activation bytes per unit of each layer)")
    upper = [min(u, int(peak_bytes // a)) if a > 0 else u for u, a in zip(upper, act_bytes, strict=True)]
  lower = [max(1, min(m, u)) for m, u in zip(mins, units, strict=True)]
  bad = [l for l in range(n) if upper[l] < lower[l]]
  if bad:
    raise InfeasibleError(
      f"layers {bad} cannot reach their minimum width {[lower[l] for l in bad]} under the peak-memory "
      f"bound {peak_bytes} bytes; raise peak_bytes or lower min_width"
    )
  dense = chain_cost(list(units), pair_costs, unit_costs, in_width=in_width)
  floor_cost = chain_cost(lower, pair_costs, unit_costs, in_width=in_width)
  if floor_cost > budgets[0] * dense * (1 + 1e-12):
    raise InfeasibleError(
      f"budget {budgets[0]:.4g} of the dense MACs ({budgets[0] * dense:.0f} MACs) is infeasible: the minimum "
      f"widths already cost {floor_cost:.0f} MACs; the smallest feasible budget is {floor_cost / dense:.4g}"
    )
  return lower, upper


def solve_nested(
  scores: Sequence[np.ndarray],
  pair_costs: Sequence[float],
  unit_costs: Sequence[float],
  budgets: Sequence[float],
  *,
  in_width: int,
  min_width: int | Sequence[int] = 1,
  max_width: Sequence[int] | None = None,
  pair_scores: Sequence[np.ndarray | None] | None = None,
  act_bytes: Sequence[float] | None = None,
  peak_bytes: float | None = None,
  granularity: int = 1,
  time_limit: float | None = None,
) -> list[Solution]:
  """The bottom-up nested knapsack: solves budgets in increasing order, each
  containing the previous solution. See `nested_widths` for the cost model.

  Args:
    act_bytes, peak_bytes: optional peak-memory bound, w_l * act_bytes[l] <= peak_bytes.
    granularity: widths restricted to multiples of this (plus the bounds) to
      shrink large problems; 1 is exact.
    time_limit: seconds per budget; a solve stopped by it reports its gap.

  Raises:
    InfeasibleError: a budget is below the smallest feasible cost (the message
      names the smallest feasible budget fraction).
  """
  if granularity < 1:
    raise ConfigError(f"granularity = {granularity}: must be >= 1")
  units, budgets = [len(s) for s in scores], [float(b) for b in budgets]
  lower, upper = check_budgets(
    units, pair_costs, unit_costs, budgets, in_width=in_width, min_width=min_width,
    max_width=max_width, act_bytes=act_bytes, peak_bytes=peak_bytes,
  )  # fmt: skip
  dense = chain_cost(units, pair_costs, unit_costs, in_width=in_width)
  out: list[Solution] = []
  for b in budgets:
    floor_cost = chain_cost(lower, pair_costs, unit_costs, in_width=in_width)
    if floor_cost > b * dense * (1 + 1e-12):
      what = "the previous (nested) subnetwork" if out else "the minimum widths"
      raise InfeasibleError(
        f"budget {b:.4g} of the dense MACs ({b * dense:.0f} MACs) is infeasible: {what} already cost "
        f"{floor_cost:.0f} MACs; the smallest feasible budget is {floor_cost / dense:.4g}"
      )
    widths, solve_s, gap, status = solve_budget(
      scores, pair_costs, unit_costs, b * dense, in_width=in_width, lower=lower, upper=upper,
      pair_scores=pair_scores, granularity=granularity, time_limit=time_limit,
    )  # fmt: skip
    if any(w < lo for w, lo in zip(widths, lower, strict=True)):
      raise AssertionError(f"solver broke nesting: {widths} below {lower}")
    macs = chain_cost(widths, pair_costs, unit_costs, in_width=in_width)
    out.append(Solution(b, widths, macs, chain_value(widths, scores, pair_scores), solve_s, gap, str(status)))
    lower = list(widths)  # bottom-up: the next subnetwork contains this one
  check_nested([s.widths for s in out])
  return out


def check_nested(widths_list: Sequence[Sequence[int]]) -> None:
  """Raises AssertionError unless each width vector is >= the previous one everywhere."""
  for a, b in zip(widths_list, widths_list[1:], strict=False):
    if any(x > y for x, y in zip(a, b, strict=True)):
      raise AssertionError(f"subnetworks are not nested: {list(a)} is not contained in {list(b)}")


def nested_widths(
  scores: Sequence[np.ndarray],
  pair_costs: Sequence[float],
  unit_costs: Sequence[float],
  budgets: Sequence[float],
  *,
  in_width: int,
  min_width: int = 1,
) -> list[list[int]]:
  """The core solver for a chain of layers (public API).

  Args:
    scores: scores[l] holds layer l's unit importances sorted descending (width
      w keeps the first w).
    pair_costs, unit_costs: layer l of width w_l after a layer of width w_(l-1)
      (w_0 = in_width) costs pair_costs[l] * w_(l-1) * w_l + unit_costs[l] * w_l MACs.
    budgets: fractions of the dense cost, increasing.
    in_width: the fixed width feeding layer 0.
    min_width: the smallest width of every layer.

  Returns:
    One width list per budget; each maximises the kept importance within its
    budget given that it contains the previous one.

  Raises:
    InfeasibleError: a budget below the smallest feasible one (named in the message).
  """
  sols = solve_nested(scores, pair_costs, unit_costs, budgets, in_width=in_width, min_width=min_width)
  return [list(s.widths) for s in sols]
