"""Per-frame compression controllers: the MPC of RTCoInfer (a reconstruction) and baselines.

The paper's controller is not public (digest section 4); this follows the MPC template of
Yin et al. (SIGCOMM'15) adapted to a frame stream. Over a horizon of H frames choose one
setup per frame to maximise the summed expected accuracy subject to every frame meeting
its deadline T. With W_k the seconds until the uplink is free when frame k arrives:

  S_k = max(W_k, t_dev(s_k))          transmission starts after device compute and the queue
  L_k = S_k + D(s_k) / C + t_srv(s_k) <= T
  W_{k+1} = max(0, S_k + D(s_k) / C - dt)

C is the predicted bandwidth: the harmonic mean of the last n throughput samples, divided
by (1 + the largest relative error of that predictor over the recent past) when `margin`. A
transfer still on the link (bits, seconds so far) bounds the rate by bits / seconds: when that is
below every recent sample it is the newest one (`with_pending`; every controller here uses it),
so an outage, in which no transfer ends and no sample comes, lowers C while it lasts.
The max(.) become >= constraints (every constraint wants them small, so the relaxation is
exact). Only the first decision is applied; the problem is re-solved every frame.

Every controller is a `Controller(init, update)` pair (the model is optax's
GradientTransformation): `state = ctl.init()`, then per frame `setup, state = ctl.update(obs,
state)` with `obs` the ControlState the frame sees; the statistics (solves, fallbacks, the
objective of the last solve) are the state, returned with each decision.

Solvers, one factory each (`make_mpc` picks by `method`): `make_mpc_milp` builds the CVXPY
problem once with Parameters (DPP) and solves it with HiGHS ("milp"), or its LP relaxation and
rounds the first frame ("relax"); `make_mpc_dp` solves the same problem exactly by a dynamic
program over (W, value) pairs with dominated pairs pruned ("dp"). `reduce=True` first drops
setups dominated in (size, compute time, accuracy), which cannot change the optimal value. A
failed or infeasible solve falls back to the smallest setup and is counted in the state.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np

from coinfer import compress
from common.errors import ConfigError

_TIE = 1e-6  # prefer the smaller payload among equally accurate plans
_EARLY = (
  1e-3  # frame k's accuracy weighs (1 - 1e-3 k): among plans with one multiset of setups, take accuracy early
)


def _gains(prof: Profile, cand: np.ndarray, horizon: int) -> np.ndarray:
  """[H, P] objective weight of choosing candidate p at frame k."""
  acc = prof.accuracy[cand][None, :] * (1.0 - _EARLY * np.arange(horizon)[:, None])
  return acc - _TIE * prof.bits[cand][None, :] / prof.bits.max()


@dataclasses.dataclass(frozen=True)
class Profile:
  """What the controller knows about each setup (arrays of length S)."""

  names: tuple
  bits: np.ndarray  # payload bits per frame (with side info)
  accuracy: np.ndarray  # expected top-1 accuracy
  t_dev: np.ndarray  # device seconds
  t_srv: np.ndarray  # server seconds


def make_profile(
  setups: Sequence[compress.Setup],
  accuracy: Sequence[float],
  *,
  image_shape=(224, 224, 3),
  device_macs_per_s: float = 2e9,
  server_macs_per_s: float = 2e11,
  server_rest_macs: float = 300e6,
) -> Profile:
  """Payload from `compress.payload_bits`, compute time from MAC counts (digest section 1):
  device 27 c (H/2)(W/2) MACs (the stem for c channels), server 288 c (H/2)(W/2) MACs for the
  dense 3x3 decoder plus the rest of MobileNetV2 scaled to the image size."""
  h, w = image_shape[0], image_shape[1]
  hw = -(-h // 2) * -(-w // 2)
  c = np.asarray([s.channels for s in setups], float)
  bits = np.asarray(
    [compress.payload_bits(s.channels, s.bits, image_shape, side_info=True) for s in setups], float
  )
  t_dev = 27 * c * hw / device_macs_per_s
  t_srv = (288 * c * hw + server_rest_macs * h * w / 224**2) / server_macs_per_s
  return Profile(tuple(s.name for s in setups), bits, np.asarray(accuracy, float), t_dev, t_srv)


class ControlState(NamedTuple):
  """What a controller sees when frame `frame` arrives."""

  frame: int
  time_s: float
  backlog_bits: float  # bits still queued on the uplink
  throughputs_bps: tuple  # measured throughputs of finished transfers, oldest first
  link_free_s: float = 0.0  # when the uplink empties (only the oracle may use it)
  pending: tuple = (0.0, 0.0)  # (bits, seconds so far) of the oldest transfer still on the link


def with_pending(throughputs_bps: Sequence[float], pending: tuple, n: int = 5) -> tuple:
  """The samples, and as the newest one the bound a transfer still running gives: `pending` =
  (bits, seconds) has gone at most bits / seconds so far; it is added when below each of the last n
  samples (a stall, as in an outage, when no transfer ends and so no sample comes)."""
  bits, seconds = pending
  if seconds <= 0:
    return tuple(throughputs_bps)
  bound = bits / seconds
  last = tuple(throughputs_bps)[-n:]
  return (*throughputs_bps, bound) if not last or bound < min(last) else tuple(throughputs_bps)


def predict_bandwidth(
  throughputs_bps: Sequence[float],
  n: int = 5,
  *,
  margin: bool = True,
  default: float = 1e6,
  pending: tuple = (0.0, 0.0),
) -> float:
  """Harmonic mean of the last n samples, divided by (1 + max recent relative error) with `margin`;
  a transfer still running (`pending`, see `with_pending`) adds its bound as the newest sample."""
  t = np.asarray(with_pending(throughputs_bps, pending, n), float)
  if t.size == 0:
    return default
  last = t[-n:]
  pred = len(last) / np.sum(1.0 / np.maximum(last, 1.0))
  if margin and t.size > 1:
    errs = []
    for j in range(max(1, t.size - n), t.size):
      past = t[max(0, j - n) : j]
      p = len(past) / np.sum(1.0 / np.maximum(past, 1.0))
      errs.append(abs(p - t[j]) / max(t[j], 1.0))
    pred /= 1.0 + max(errs)
  return float(pred)


class MPCState(NamedTuple):
  """An MPC controller's statistics: solves, fallbacks (failed or infeasible), the objective of
  the last solve (None after a failed one) and the setups kept after reduction."""

  solves: int = 0
  fallbacks: int = 0
  value: float | None = None
  candidates: int = 0


class BaselineState(NamedTuple):
  """A baseline controller's statistics (it never falls back)."""

  fallbacks: int = 0


class Controller(NamedTuple):
  """`init() -> state`; `update(obs: ControlState, state) -> (setup index, state)`."""

  init: Callable[[], Any]
  update: Callable[[ControlState, Any], tuple[int, Any]]


def _stateless(choose: Callable[[ControlState], int]) -> Controller:
  return Controller(BaselineState, lambda obs, state: (choose(obs), state))


def _dp_first(
  prof: Profile, cand: np.ndarray, w0: float, inv_c: float, dt: float, deadline: float, horizon: int
):
  """Exact optimum over the horizon by a dynamic program; returns the first setup or None."""
  tx = prof.bits[cand] * inv_c
  start_lat = tx + prof.t_srv[cand]
  gains = _gains(prof, cand, horizon)
  w = np.asarray([w0])
  val = np.asarray([0.0])
  first = np.asarray([-1])
  for k in range(horizon):
    s = np.maximum(w[:, None], prof.t_dev[cand][None, :])
    ok = s + start_lat[None, :] <= deadline
    if not ok.any():
      return None
    wi, si = np.nonzero(ok)
    w_new = np.maximum(0.0, s[wi, si] + tx[si] - dt)
    v_new = val[wi] + gains[k][si]
    f_new = np.where(first[wi] < 0, si, first[wi]) if k else si
    # prune: keep a state only if no state with smaller-or-equal W has a larger value
    order = np.lexsort((-v_new, w_new))
    w_new, v_new, f_new = w_new[order], v_new[order], f_new[order]
    best = np.maximum.accumulate(v_new)
    keep = np.concatenate([[True], v_new[1:] > best[:-1]])
    w, val, first = w_new[keep], v_new[keep], f_new[keep]
  best = int(np.argmax(val))
  return int(cand[first[best]]), float(val[best])


def _checked(method: str, horizon: int) -> None:
  if method not in ("milp", "relax", "dp"):
    raise ConfigError(f"config.stream.method = {method!r}: must be one of ['milp', 'relax', 'dp']")
  if horizon < 1:
    raise ConfigError(f"config.stream.horizon = {horizon}: must be >= 1")


def _candidates(prof: Profile, reduce: bool) -> np.ndarray:
  n_all = len(prof.bits)
  cost = prof.t_dev + prof.t_srv
  return np.asarray(compress.pareto_front(prof.bits, prof.accuracy, cost) if reduce else np.arange(n_all))


def start_bps(prof: Profile, fps: float) -> float:
  """The bandwidth a controller assumes before its first throughput sample: the smallest setup at the
  frame rate, so that a stream starts with the smallest setup (as adaptive-bitrate players start at
  the lowest bitrate) rather than guess a rate the link may not have."""
  return float(np.min(prof.bits)) * fps


def _predictor(history: int, margin: bool, start: float) -> Callable[[ControlState], tuple[float, float]]:
  def predict(obs: ControlState) -> tuple[float, float]:
    """(seconds per bit, seconds of backlog) at the predicted bandwidth."""
    c = predict_bandwidth(obs.throughputs_bps, history, margin=margin, pending=obs.pending, default=start)
    return 1.0 / c, obs.backlog_bits / c

  return predict


def _setting_up(prof: Profile, horizon: int, method: str, *, fps, history, margin, reduce, start=None):
  """(candidate setups, the smallest setup, frame interval, bandwidth predictor) of an MPC; `start`:
  the bandwidth before the first sample (None: `start_bps`)."""
  _checked(method, horizon)
  predict = _predictor(history, margin, start_bps(prof, fps) if start is None else start)
  return _candidates(prof, reduce), int(np.argmin(prof.bits)), 1.0 / fps, predict


def _solved(state: MPCState, value: float | None, *, fallback: bool = False) -> MPCState:
  return state._replace(solves=state.solves + 1, fallbacks=state.fallbacks + int(fallback), value=value)


def make_mpc(
  setups: Profile,
  horizon: int = 5,
  *,
  fps: float = 10.0,
  deadline_s: float = 0.2,
  history: int = 5,
  margin: bool = True,
  method: str = "milp",
  reduce: bool = True,
  solver: str | None = None,
  start: float | None = None,
) -> Controller:
  """The MPC controller with the solver `method`: "dp" (`make_mpc_dp`), "milp" or "relax"
  (`make_mpc_milp`). Its state (MPCState) counts solves and fallbacks. `start`: the bandwidth it
  assumes before its first sample (None: `start_bps`, the smallest setup at the frame rate)."""
  _checked(method, horizon)
  kw = dict(fps=fps, deadline_s=deadline_s, history=history, margin=margin, reduce=reduce, start=start)
  if method == "dp":
    return make_mpc_dp(setups, horizon, **kw)
  return make_mpc_milp(setups, horizon, relax=method == "relax", solver=solver, **kw)


def make_mpc_dp(
  prof: Profile,
  horizon: int = 5,
  *,
  fps: float = 10.0,
  deadline_s: float = 0.2,
  history: int = 5,
  margin: bool = True,
  reduce: bool = True,
  start: float | None = None,
) -> Controller:
  """The MPC solved exactly by the dynamic program (`_dp_first`) every frame."""
  kw = dict(fps=fps, history=history, margin=margin, reduce=reduce, start=start)
  cand, smallest, dt, predict = _setting_up(prof, horizon, "dp", **kw)

  def update(obs: ControlState, state: MPCState) -> tuple[int, MPCState]:
    inv_c, w0 = predict(obs)
    res = _dp_first(prof, cand, w0, inv_c, dt, deadline_s, horizon)
    if res is None:
      return smallest, _solved(state, None, fallback=True)
    return res[0], _solved(state, res[1])

  return Controller(lambda: MPCState(candidates=len(cand)), update)


def _milp_problem(prof: Profile, cand: np.ndarray, horizon: int, dt: float, deadline_s: float, relax: bool):
  """The MPC's CVXPY problem over the candidates (DPP): (problem, choice variable, seconds per Mbit
  and backlog-seconds parameters)."""
  import cvxpy as cp

  p = len(cand)
  size = prof.bits[cand] / 1e6  # Mbit keeps the numbers well scaled
  gains = _gains(prof, cand, horizon)
  inv_c = cp.Parameter(nonneg=True, name="s_per_mbit")
  w0 = cp.Parameter(nonneg=True, name="backlog_s")
  x = cp.Variable((horizon, p), boolean=not relax, name="choice")
  w = cp.Variable(horizon + 1, nonneg=True, name="wait")
  s = cp.Variable(horizon, name="start")
  cons = [cp.sum(x, axis=1) == 1, w[0] == w0]
  if relax:
    cons += [x >= 0, x <= 1]
  for k in range(horizon):
    tx = inv_c * (x[k] @ size)
    cons += [
      s[k] >= w[k],
      s[k] >= x[k] @ prof.t_dev[cand],
      w[k + 1] >= s[k] + tx - dt,
      s[k] + tx + x[k] @ prof.t_srv[cand] <= deadline_s,
    ]
  problem = cp.Problem(cp.Maximize(cp.sum(cp.multiply(x, gains))), cons)
  if not problem.is_dpp():
    raise AssertionError("the MPC problem must be DPP")
  return problem, x, inv_c, w0


def make_mpc_milp(
  prof: Profile,
  horizon: int = 5,
  *,
  fps: float = 10.0,
  deadline_s: float = 0.2,
  history: int = 5,
  margin: bool = True,
  relax: bool = False,
  reduce: bool = True,
  solver: str | None = None,
  start: float | None = None,
) -> Controller:
  """The MPC as a CVXPY problem built once (DPP) and re-solved every frame: a MILP with HiGHS, or
  with `relax` its LP relaxation, rounded to the most accurate setup in the support of the first
  frame's choice that keeps it on time."""
  import cvxpy as cp

  kw = dict(fps=fps, history=history, margin=margin, reduce=reduce, start=start)
  cand, smallest, dt, predict = _setting_up(prof, horizon, "relax" if relax else "milp", **kw)
  problem, x, inv_c, w0 = _milp_problem(prof, cand, horizon, dt, deadline_s, relax)
  solver = solver or "HIGHS"
  opts = {"mip_rel_gap": 1e-9} if not relax and solver == "HIGHS" else {}
  order = np.argsort(-prof.accuracy[cand])

  def update(obs: ControlState, state: MPCState) -> tuple[int, MPCState]:
    ic, b0 = predict(obs)
    inv_c.value = ic * 1e6
    w0.value = b0
    try:
      problem.solve(solver=solver, **opts)
    except cp.error.SolverError:
      return smallest, _solved(state, None, fallback=True)
    if problem.status not in ("optimal", "optimal_inaccurate") or x.value is None:
      return smallest, _solved(state, None, fallback=True)
    value, row = float(problem.value), x.value[0]
    if not relax:
      return int(cand[int(np.argmax(row))]), _solved(state, value)
    # relaxation: round to the most accurate setup in the support that keeps frame 0 on time
    for j in order:
      if (
        row[j] > 1e-6
        and max(b0, prof.t_dev[cand[j]]) + prof.bits[cand[j]] * ic + prof.t_srv[cand[j]] <= deadline_s
      ):
        return int(cand[j]), _solved(state, value)
    return smallest, _solved(state, value, fallback=True)

  return Controller(lambda: MPCState(candidates=len(cand)), update)


# ---------------------------------------------------------------- baselines


def make_fixed(index: int) -> Controller:
  """Always the same setup."""
  return _stateless(lambda obs: int(index))


def make_rate_based(prof: Profile, *, fps: float = 10.0, history: int = 5) -> Controller:
  """The most accurate setup whose payload fits one frame interval at the predicted bandwidth
  (harmonic mean, no margin, queue ignored); the smallest when none fits."""
  dt = 1.0 / fps
  smallest = int(np.argmin(prof.bits))
  start = start_bps(prof, fps)

  def decide(state: ControlState) -> int:
    c = predict_bandwidth(state.throughputs_bps, history, margin=False, pending=state.pending, default=start)
    fits = np.flatnonzero(prof.bits / c <= dt)
    if fits.size == 0:
      return smallest
    return int(fits[np.lexsort((prof.bits[fits], -prof.accuracy[fits]))[0]])

  return _stateless(decide)


def make_buffer_based(
  prof: Profile,
  *,
  fps: float = 10.0,
  deadline_s: float = 0.2,
  reservoir: float = 0.1,
  cushion: float = 0.5,
  history: int = 5,
) -> Controller:
  """BBA-style: the uplink backlog in seconds (at the predicted bandwidth) maps linearly onto the
  Pareto setups, the largest below `reservoir * T`, the smallest above `(reservoir + cushion) * T`."""
  front = compress.pareto_front(prof.bits, prof.accuracy, prof.t_dev + prof.t_srv)
  start = start_bps(prof, fps)

  def decide(state: ControlState) -> int:
    c = predict_bandwidth(state.throughputs_bps, history, margin=False, pending=state.pending, default=start)
    b = state.backlog_bits / c
    lo, hi = reservoir * deadline_s, (reservoir + cushion) * deadline_s
    frac = np.clip((b - lo) / (hi - lo), 0.0, 1.0)
    return int(front[int(round((1.0 - frac) * (len(front) - 1)))])

  return _stateless(decide)


def make_oracle(prof: Profile, trace, *, fps: float = 10.0, deadline_s: float = 0.2) -> Controller:
  """Knows the future bandwidth: the most accurate setup whose true latency meets the deadline
  and after which the next frame could still meet it with the smallest setup (one-step lookahead)."""
  dt = 1.0 / fps
  smallest = int(np.argmin(prof.bits))
  order = np.lexsort((prof.bits, -prof.accuracy))

  def decide(state: ControlState) -> int:
    for i in order:
      start = max(state.link_free_s, state.time_s + prof.t_dev[i])
      end = trace.transfer_end(start, prof.bits[i])
      if end + prof.t_srv[i] - state.time_s > deadline_s:
        continue
      t1 = state.time_s + dt
      s2 = max(end, t1 + prof.t_dev[smallest])
      if trace.transfer_end(s2, prof.bits[smallest]) + prof.t_srv[smallest] - t1 <= deadline_s:
        return int(i)
    return smallest

  return _stateless(decide)
