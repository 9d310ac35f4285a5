"""Stage-wise branch search (NN-Stretch §2.2), minimising the cost model's latency.

For every stage of a single-branch original (depth D, width W, MAC count F,
best single-processor latency L* = min_p L_p(D, W)), each processor p gets one
branch with depth d in [round(0.66 D), D] and width w in [0.5 W, W] (multiples
of 8, and of the group width where the block has groups). A tuple of branches
is feasible when

* the branch on the processor that runs the original stage fastest (the main
  branch) keeps MACs >= alpha * F (alpha = 0.4),
* all branches together keep MACs >= beta * F (beta = 0.8),
* every branch's compute latency is <= gamma * L* (gamma = 0.8);

among feasible tuples the search takes the smallest stage latency (slowest
branch + fork/join transfers + concat), ties broken by more MACs. When no tuple
is feasible or none beats running the original stage on the merge processor,
the stage stays unbranched. Stages are searched in order, each with the merged
width the previous stage produced. Branch features are linear in depth, so a
branch costs two network walks per width; every candidate tuple of a stage is
then scored in one jitted, vmapped call. Dominated candidates (slower and with
fewer MACs than another on the same processor) are pruned first, which cannot
change the optimum.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from branching import costmodel, flops
from branching.network import Branch, NetConfig, Stage
from common.errors import ConfigError, InfeasibleError

_FRONT = {1: 4096, 2: 256, 3: 40, 4: 16}


def depth_range(d: int, lo: float = 0.66) -> list[int]:
  return list(range(max(1, flops.make_divisible(lo * d, 1)), d + 1))


def width_range(b: Branch, lo: float = 0.5, step: int = 8, block_type: str = "") -> list[int]:
  """Candidate widths in [lo * W, W] in steps of `step` that keep the group width valid."""
  w0 = b.width
  start = flops.make_divisible(lo * w0, step)
  out = []
  for w in range(start, w0 + 1, step):
    if block_type == "res_bottleneck_block" and not _plain_groups(b):
      w_b = int(round(w * b.bot_mul))
      if w_b % b.group_w:
        continue
    out.append(w)
  if w0 not in out:
    out.append(w0)
  return out


def _plain_groups(b: Branch) -> bool:
  return b.group_w == int(round(b.width * b.bot_mul))


def _branch_with(b: Branch, device: str, d: int, w: int, block_type: str) -> Branch:
  gw = b.group_w
  if block_type != "mbconv" and _plain_groups(b):
    gw = int(round(w * b.bot_mul))
  return dataclasses.replace(b, device=device, depth=d, width=w, group_w=gw)


def _block_feats(
  c: NetConfig, st: Stage, b: Branch, w_in: int, hw: int
) -> tuple[np.ndarray, np.ndarray, int, int]:
  """Features and MACs of the first block and of each further block of branch b."""
  res = []
  for first in (True, False):
    wk = flops.Walker(hw if first else (hw - 1) // b.stride + 1)
    tag = {"device": b.device, "stage": 0, "branch": 0}
    flops.block(wk, c, "x", b, w_in if first else b.width, b.width, b.stride if first else 1, st.kernel, tag)
    feats = sum(costmodel.op_features(o) for o in wk.ops if "_se_" not in o.name)
    res.append((feats, sum(o.macs for o in wk.ops)))
  return res[0][0], res[1][0], res[0][1], res[1][1]


@jax.jit
def _score(
  feats, xfer, macs, coef, combos, concat_feats, merge_coef, lat_cap, main_k, main_floor, total_floor
):
  """Scores every combination of branch candidates.

  Args:
    feats: [n, M, F] compute features per branch slot and candidate (padded).
    xfer: [n, M, F] transfer features.
    macs: [n, M] MACs (padding: -inf-like large negative).
    coef: [n, F] the cost coefficients of each slot's processor.
    combos: [C, n] candidate index per slot.
    concat_feats: [n, M, F] the concat's features contributed by each candidate's output.
    merge_coef: [F] the merge processor's coefficients.
    lat_cap: gamma * L* (traced), main_k: slot of the main branch, floors: alpha*F, beta*F.
  Returns:
    (index of the best combination, its latency, feasible count).
  """
  comp = jnp.einsum("nmf,nf->nm", feats, coef)
  tot = comp + jnp.einsum("nmf,nf->nm", xfer, coef)
  cat = jnp.einsum("nmf,f->nm", concat_feats, merge_coef)

  def one(idx):
    k = jnp.arange(idx.shape[0])
    c_lat, t_lat, m = comp[k, idx], tot[k, idx], macs[k, idx]
    lat = jnp.max(t_lat) + jnp.sum(cat[k, idx])
    ok = jnp.all(c_lat <= lat_cap) & (m[main_k] >= main_floor) & (jnp.sum(m) >= total_floor)
    return lat, ok, jnp.sum(m)

  lat, ok, tm = jax.vmap(one)(combos)
  obj = jnp.where(ok, lat - 1e-15 * tm, jnp.inf)
  best = jnp.argmin(obj)
  return best, lat[best], jnp.sum(ok)


def pareto(lat: np.ndarray, macs: np.ndarray, limit: int) -> np.ndarray:
  """Indices of candidates not dominated (lower latency and more MACs), at most `limit`."""
  order = np.lexsort((-macs, lat))
  keep, best = [], -1.0
  for i in order:
    if macs[i] > best:
      keep.append(i)
      best = macs[i]
  keep = np.asarray(keep)
  if len(keep) > limit:
    keep = keep[np.linspace(0, len(keep) - 1, limit).round().astype(int)]
  return keep


@dataclasses.dataclass(frozen=True)
class Slot:
  """One processor's candidate branches for a stage (after pruning): (depth, width) and their features."""

  rows: list[tuple[int, int]]
  feats: np.ndarray  # [m, F] compute features
  xfer: np.ndarray  # [m, F] fork/join transfer features (zero on the merge processor)
  macs: np.ndarray  # [m]
  concat: np.ndarray  # [m, F] what each candidate's output adds to the concat


def slot_candidates(
  config: NetConfig, st: Stage, p: str, merge: str, coef: np.ndarray, w_in: int, hw: int, n: int, *,
  depth_lo: float, width_lo: float, step: int,
) -> Slot:  # fmt: skip
  """The non-dominated (depth, width) branches of stage `st` on processor `p` (at most _FRONT[n])."""
  b0 = st.branches[0]
  hw_out = (hw - 1) // b0.stride + 1
  rows, fs, xs, ms, cs = [], [], [], [], []
  for w in width_range(b0, width_lo, step, config.block_type):
    f1, fr, m1, mr = _block_feats(config, st, _branch_with(b0, p, 1, w, config.block_type), w_in, hw)
    x = np.zeros_like(f1)
    if p != merge:
      x = costmodel.xfer_features(hw * hw * w_in + hw_out * hw_out * w) + costmodel.xfer_features(0)
    cat = np.zeros_like(f1)
    cat[3], cat[4] = 2 * hw_out * hw_out * w, 1.0 / n
    for d in depth_range(b0.depth, depth_lo):
      rows.append((d, w))
      fs.append(f1 + (d - 1) * fr)
      ms.append(m1 + (d - 1) * mr)
      xs.append(x)
      cs.append(cat)
  fs, xs, ms, cs = map(np.asarray, (fs, xs, ms, cs))
  keep = pareto(fs @ coef + xs @ coef, ms.astype(np.float64), _FRONT.get(n, 8))
  return Slot([rows[j] for j in keep], fs[keep], xs[keep], ms[keep], cs[keep])


def best_tuple(slots: Sequence[Slot], coefs, merge_coef, *, lat_cap, main_k, main_floor, total_floor):
  """Scores every tuple of the slots' candidates; (chosen (d, w) per slot, latency, feasible count)."""
  m_pad = max(len(sl.rows) for sl in slots)

  def pad(a, fill):
    out = np.full((m_pad, *a.shape[1:]), fill, np.float64)
    out[: len(a)] = a
    return out

  stack = lambda f, fill: jnp.asarray(np.stack([pad(f(sl), fill) for sl in slots]))  # noqa: E731
  combos = np.asarray(list(itertools.product(*[range(len(sl.rows)) for sl in slots])), np.int32)
  best, lat, n_ok = jax.device_get(
    _score(
      stack(lambda sl: sl.feats, 1e30), stack(lambda sl: sl.xfer, 0.0),
      stack(lambda sl: sl.macs.astype(np.float64), -1e30), jnp.asarray(coefs), jnp.asarray(combos),
      stack(lambda sl: sl.concat, 0.0), jnp.asarray(merge_coef), lat_cap, main_k, main_floor, total_floor,
    )
  )  # fmt: skip
  picks = [sl.rows[int(combos[best, k])] for k, sl in enumerate(slots)]
  return picks, float(lat), int(n_ok), len(combos)


def stretch(
  config: NetConfig,
  processors: Sequence[str],
  *,
  table: costmodel.CostTable | None = None,
  alpha: float = 0.4,
  beta: float = 0.8,
  gamma: float = 0.8,
  image_size: int = 224,
  depth_lo: float = 0.66,
  width_lo: float = 0.5,
  step: int = 8,
  device_map=None,
  log: list | None = None,
) -> NetConfig:
  """Stretches a single-branch `config` into one branch per processor; returns the new config.

  Args:
    config: the single-branch original (e.g. `published("R-50-C")`).
    processors: e.g. ("cpu", "dsp"); the first is the merge / stem / head processor.
    table: calibrated costs (default: fitted to the published latencies).
    alpha, beta, gamma: the constraints above.
    log: when given, one dict per stage is appended (candidates, feasible, latency).
  """
  table = table if table is not None else costmodel.default_table()
  procs = tuple(processors)
  if not procs or len(set(procs)) != len(procs):
    raise ConfigError(f"processors = {procs!r}: give distinct processors, e.g. ('cpu', 'dsp')")
  if any(st.branched for st in config.stages):
    raise ConfigError(f"{config.name}: search needs the single-branch original, got a stretched config")
  dm = dict(device_map or {})
  coefs = np.stack([table.vector(dm.get(p, p)) for p in procs])
  merge = procs[0]
  merge_coef = table.vector(dm.get(merge, merge))
  # Input of stage 0: walk the stem.
  stem_ops = [o for o in flops.ops(config, image_size) if o.stage == -1]
  hw = _out_hw(image_size, config)
  w_in = stem_ops[-1].act_out // (hw * hw)
  if len(procs) == 1:
    raise InfeasibleError("give at least two processors to stretch over")
  search = dict(alpha=alpha, beta=beta, gamma=gamma, depth_lo=depth_lo, width_lo=width_lo, step=step)
  new_stages = []
  for i, st in enumerate(config.stages):
    new_st, row = _stretch_stage(config, st, procs, coefs, merge_coef, w_in, hw, **search)
    new_stages.append(new_st)
    if log is not None:
      log.append({"stage": i + 1, **row})
    hw, w_in = (hw - 1) // st.branches[0].stride + 1, new_st.out_width
  return config.replace(
    name=f"{config.name.rsplit('-', 1)[0]}-{''.join(p[0].upper() for p in procs)}-searched",
    stages=tuple(new_stages),
    devices=procs,
    stem_device=merge,
    head_device=merge,
    merge_device=merge,
    mb_ver=2,
  )


def _stretch_stage(config: NetConfig, st: Stage, procs: tuple, coefs, merge_coef, w_in: int, hw: int, *,
                   alpha: float, beta: float, gamma: float, depth_lo: float, width_lo: float, step: int):  # fmt: skip
  """(stretched stage, log row) of one stage: the best feasible branch tuple when it beats the
  original on the merge processor, else the original there."""
  b0, merge = st.branches[0], procs[0]
  ref_first, ref_rep, ref_m1, ref_mr = _block_feats(config, st, b0, w_in, hw)
  ref_macs = ref_m1 + (b0.depth - 1) * ref_mr
  ref_lat = coefs @ (ref_first + (b0.depth - 1) * ref_rep)
  l_star, main_k = float(ref_lat.min()), int(np.argmin(ref_lat))
  slots = [
    slot_candidates(config, st, p, merge, coefs[k], w_in, hw, len(procs), depth_lo=depth_lo,
                    width_lo=width_lo, step=step)
    for k, p in enumerate(procs)
  ]  # fmt: skip
  picks, lat, n_ok, n_combos = best_tuple(
    slots, coefs, merge_coef, lat_cap=gamma * l_star, main_k=main_k, main_floor=alpha * ref_macs,
    total_floor=beta * ref_macs,
  )  # fmt: skip
  single_lat = float(ref_lat[0])
  branched = n_ok > 0 and lat < single_lat
  if branched:
    branches = tuple(
      _branch_with(b0, p, d, w, config.block_type) for p, (d, w) in zip(procs, picks, strict=True)
    )
  else:
    branches = (dataclasses.replace(b0, device=merge),)
  row = {
    "combinations": n_combos,
    "feasible": n_ok,
    "original_ms": {p: float(v) for p, v in zip(procs, ref_lat, strict=True)},
    "F": int(ref_macs),
    "L_star": l_star,
    "main": procs[main_k],
    "stage_ms": lat if branched else single_lat,
    "branches": [(b.device, b.depth, b.width) for b in branches],
  }
  return Stage(branches, sum(b.width for b in branches), st.kernel), row


def _out_hw(image_size: int, c: NetConfig) -> int:
  hw = (image_size - 1) // 2 + 1
  if c.stem_type == "res_stem_in":
    hw = (hw - 1) // 2 + 1
  return hw


def best_single(config: NetConfig, processors: Sequence[str], table=None, **kw) -> tuple[str, float]:
  """(processor, ms) of the fastest single processor running the original `config`."""
  from branching.network import single_branch

  lats = {p: costmodel.predict(single_branch(config, p), table, **kw) for p in processors}
  p = min(lats, key=lats.get)
  return p, lats[p]
