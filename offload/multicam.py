"""Many cameras behind one switch: per-camera token buckets and an aggregate bucket at the switch.

The multi-device experiments of Chakrabarti et al. (SEC 2021; edgeml.mdp `mcsimulate`,
`runtest_mcam.py`). N cameras each see one image per slot, keep their own bucket
(q_i, p_i, m_i) and threshold policy, and send their offloads through one switch whose
bucket (q_g, p_g, m_g) gains q_g units per camera arrival (rate r per camera, depth N b).
Within a slot every camera first applies its own rule (offload iff metric >= threshold[n_i]
and n_i >= p_i; a camera whose rule fires spends its own tokens); then the cameras are
served in index order at the switch: an offload goes through only if the switch holds p_g
units, else it is dropped there and the weak result stands. The reward R = wcost - scost
is earned only by offloads that go through.

`simulate` is one `lax.scan` over slots, vmapped over the settings of a grid (each with its
own policy, camera bucket, switch bucket and camera count, all traced) and, inside, over
streams: a sweep never recompiles. Camera counts up to the streams' last axis run in one
program: cameras j >= N are masked out (no arrivals, no switch refill).

Strategies (`runtest_mcam`): isolated (every camera keeps (r, b) and its MDP policy),
hierarchical (every camera gets the (r_i, b_i) of a grid whose training-set gain through the
switch is largest, and its MDP policy) and the smart switch (one MDP policy for the aggregate
bucket (r, N b) deciding on the cameras' images in slot order, an upper bound).
"""

from __future__ import annotations

import time
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from common.errors import ConfigError
from offload import bucket

# The switch of a camera alone: it refills before every decision, so it never refuses.
OPEN_SWITCH = bucket.QPM(1, 1, 1)


class Totals(NamedTuple):
  """Per setting, summed over streams and slots (gain exact for integer rewards below 2^24)."""

  gain: jax.Array  # [G, B] float32: per stream, rewards of the offloads that went through
  fired: jax.Array  # [G] int32: offloads the cameras' own rules sent
  granted: jax.Array  # [G] int32: offloads the switch let through
  occupancy: jax.Array  # [G, B] int32: per stream, the switch's units before each camera arrival
  histogram: jax.Array  # [G, H] int32: the switch's units before each camera arrival (H = hist_size)


def streams(key: jax.Array, num_images: int, slots: int, num_streams: int, cameras: int) -> jax.Array:
  """i.i.d. uniform image indices [slots, streams, cameras] (the original's `randint` streams)."""
  return jax.random.randint(key, (slots, num_streams, cameras), 0, num_images, jnp.int32)


def settings(cams, cam_qpm, switch_qpm, smart=False) -> dict[str, jax.Array]:
  """The traced per-setting arrays of `simulate` from camera counts, QPM triples and smart flags.

  A smart setting's policy is indexed by the switch's units and decides at the switch for every
  camera in turn (its cameras' own buckets are ignored); cam_qpm is then unused.
  """
  ci, cg = np.asarray(cam_qpm, np.int32).reshape(-1, 3), np.asarray(switch_qpm, np.int32).reshape(-1, 3)
  out = {f"{k}_i": jnp.asarray(ci[:, i]) for i, k in enumerate("qpm")}
  out.update({f"{k}_g": jnp.asarray(cg[:, i]) for i, k in enumerate("qpm")})
  out["cams"] = jnp.asarray(np.broadcast_to(np.asarray(cams, np.int32), ci.shape[:1]))
  out["smart"] = jnp.asarray(np.broadcast_to(np.asarray(smart, bool), ci.shape[:1]))
  return out


@partial(jax.jit, static_argnames=("hist_size",))
def simulate(thresholds_GxS, sets: dict, metrics, rewards, idx_TxBxN, *, hist_size: int = 1) -> Totals:
  """Every setting g on the same streams (idx [slots, streams, cameras]).

  Args:
    thresholds_GxS: camera policy per setting, indexed by the camera's units n (+inf: keep).
    sets: `settings(...)`: q_i, p_i, m_i, q_g, p_g, m_g, cams [G] int32 and smart [G] bool.
    metrics, rewards: per-image arrays of the split the indices address.
    idx_TxBxN: image indices; camera j of stream b sees image idx[t, b, j] in slot t.
    hist_size: states of the switch histogram (1 when not wanted; larger states are clipped).
  """
  m_tbn, r_tbn = metrics[idx_TxBxN], rewards[idx_TxBxN]
  return jax.vmap(_one, in_axes=(0, 0, None, None, None))(thresholds_GxS, sets, m_tbn, r_tbn, hist_size)


def _one(th, s, m_tbn, r_tbn, hist_size):
  """One setting on all streams: scan over slots, cameras served in index order at the switch."""
  _, nb, ncam = m_tbn.shape
  active = jnp.arange(ncam) < s["cams"]

  def slot(carry, x):
    n_i, n_g, gain, fired, granted, occ, hist = carry
    m_t, r_t = x
    send = (m_t >= th[n_i]) & (n_i >= s["p_i"]) & active[None, :]
    n_i = jnp.minimum(s["m_i"], n_i - s["p_i"] * send + s["q_i"])
    for j in range(ncam):
      on = active[j]
      occ += jnp.where(on, n_g, 0)
      if hist_size > 1:
        hist = hist.at[jnp.minimum(n_g, hist_size - 1)].add(on.astype(jnp.int32))
      want = jnp.where(s["smart"], on & (m_t[:, j] >= th[n_g]), send[:, j])
      ok = want & (n_g >= s["p_g"])
      gain += jnp.where(ok, r_t[:, j], 0.0)
      fired += want.sum(dtype=jnp.int32)
      granted += ok.sum(dtype=jnp.int32)
      n_g = jnp.where(on, jnp.minimum(s["m_g"], n_g - s["p_g"] * ok + s["q_g"]), n_g)
    return (n_i, n_g, gain, fired, granted, occ, hist), None

  init = (
    jnp.full((nb, ncam), s["m_i"], jnp.int32),
    jnp.full((nb,), s["m_g"], jnp.int32),
    jnp.zeros((nb,), jnp.float32),
    jnp.int32(0),
    jnp.int32(0),
    jnp.zeros((nb,), jnp.int32),
    jnp.zeros((hist_size,), jnp.int32),
  )
  (_, _, gain, fired, granted, occ, hist), _ = jax.lax.scan(slot, init, (m_tbn, r_tbn))
  return Totals(gain, fired, granted, occ, hist)


def per_image(tot: Totals, cams, slots: int, num_streams: int) -> dict[str, np.ndarray]:
  """Averages per camera image: gain, fired and granted fractions, the switch's mean units n_g."""
  n = np.asarray(cams, np.float64) * slots * num_streams
  return {
    "gain": np.asarray(tot.gain, np.float64).sum(-1) / n,
    "fired": np.asarray(tot.fired, np.float64) / n,
    "granted": np.asarray(tot.granted, np.float64) / n,
    "occupancy_units": np.asarray(tot.occupancy, np.float64).sum(-1) / n,
  }


def hierarchical_grid(rate: float, depth: float, grid_rates, grid_depths) -> np.ndarray:
  """The (r_i, b_i) of the grid the search may pick for a per-camera share (rate, depth), [K, 2].

  As `runtest_mcsim`: a point with less of both (r_i <= r and b_i < b, or r_i < r and b_i <= b)
  is dropped. Raises ConfigError when nothing is left.
  """
  pts = np.asarray([(r, b) for r in grid_rates for b in grid_depths], np.float64).reshape(-1, 2)
  worse = ((pts[:, 0] <= rate) & (pts[:, 1] < depth)) | ((pts[:, 0] < rate) & (pts[:, 1] <= depth))
  if worse.all():
    raise ConfigError(
      f"config.multicam.grid_rates / grid_depths: no point of the grid has r_i >= {rate} or b_i >= "
      f"{depth} (the share (r, b) = ({rate}, {depth})); widen the grid"
    )
  return pts[~worse]


def check(cameras, rates, depths, grid_rates, grid_depths) -> None:
  """Validates the multi-camera sweep (ConfigError names the key and the allowed range)."""
  for key, vals, lo in (("cameras", cameras, 1), ("rates", rates, None), ("depths", depths, 1.0)):
    if not len(vals):
      raise ConfigError(f"config.multicam.{key} is empty: give at least one value")
    for i, v in enumerate(vals):
      if key == "cameras" and not (isinstance(v, int) and v >= 1):
        raise ConfigError(f"config.multicam.cameras[{i}] = {v!r}: must be an integer >= 1")
      if key != "cameras" and not (isinstance(v, int | float) and v > 0 and (lo is None or v >= lo)):
        rng = "(0, 1)" if key == "rates" else "[1, 100] (b < 1 token cannot pay one offload, p)"
        raise ConfigError(f"config.multicam.{key}[{i}] = {v!r}: must be in {rng}")
  for i, v in enumerate(rates):
    if not v < 1:
      raise ConfigError(f"config.multicam.rates[{i}] = {v!r}: must be in (0, 1)")
  for key, vals in (("grid_rates", grid_rates), ("grid_depths", grid_depths)):
    if not len(vals):
      raise ConfigError(f"config.multicam.{key} is empty: give at least one value")
    for i, v in enumerate(vals):
      ok = isinstance(v, int | float) and (0 < v < 1 if key == "grid_rates" else 1 <= v <= 100)
      if not ok:
        rng = "(0, 1): r_i <= 0 grants nothing" if key == "grid_rates" else "[1, 100]: b_i < p"
        raise ConfigError(f"config.multicam.{key}[{i}] = {v!r}: must be in {rng}")
  for r in rates:
    for b in depths:
      hierarchical_grid(r, b, grid_rates, grid_depths)


def run_chunked(
  thresholds_GxS, sets: dict, metrics, rewards, idx, *, chunk: int, hist_size: int = 1, desc=""
):
  """`simulate` over G settings in vmapped chunks of min(chunk, G) (the last one padded): one compile.

  Returns the Totals as NumPy arrays with G rows. A non-empty `desc` shows a progress bar.
  """
  from tqdm import tqdm

  g = thresholds_GxS.shape[0]
  chunk = min(chunk, g)
  pad = (-g) % chunk
  rows = np.concatenate([np.arange(g), np.full(pad, g - 1)])
  th = jnp.asarray(thresholds_GxS, jnp.float32)
  metrics, rewards, idx = (
    jnp.asarray(metrics, jnp.float32),
    jnp.asarray(rewards, jnp.float32),
    jnp.asarray(idx),
  )
  parts = []
  for start in tqdm(range(0, len(rows), chunk), desc=desc, disable=not desc, leave=False):
    sl = jnp.asarray(rows[start : start + chunk])
    sub = {k: v[sl] for k, v in sets.items()}
    parts.append(jax.device_get(simulate(th[sl], sub, metrics, rewards, idx, hist_size=hist_size)))
  return Totals(*(np.concatenate([getattr(p, f) for p in parts])[:g] for f in Totals._fields))


class Sweep(NamedTuple):
  """The multi-camera sweep: per-camera shares (rates x depths) x camera counts, and the search grid."""

  cameras: tuple
  rates: tuple
  depths: tuple
  grid_rates: tuple
  grid_depths: tuple


def policy_settings(sw: Sweep) -> list[tuple[float, float]]:
  """Every (rate, depth) whose MDP policy the strategies use: the grid, the shares, the aggregates."""
  pts = {(float(r), float(b)) for r in sw.grid_rates for b in sw.grid_depths}
  pts |= {(float(r), float(b)) for r in sw.rates for b in sw.depths}
  pts |= {(float(r), float(b) * n) for r in sw.rates for b in sw.depths for n in sw.cameras}
  return sorted(pts)


def search(th_of, sw: Sweep, metrics_tr, rewards_tr, idx_tr, *, chunk: int, desc="") -> dict[str, np.ndarray]:
  """The hierarchical grid search on training streams: gain through the switch of every (r_i, b_i).

  th_of(r, b) -> threshold row. Returns "scores" [R, B, C, len(grid_rates), len(grid_depths)]
  (gain per camera image; NaN for points the search skips) and "best" [R, B, C, 2].
  """
  cases, rows, cam_qpm, sw_qpm, cams = [], [], [], [], []
  for ri, r in enumerate(sw.rates):
    for bi, b in enumerate(sw.depths):
      allowed = {tuple(p) for p in hierarchical_grid(r, b, sw.grid_rates, sw.grid_depths)}
      for ci, n in enumerate(sw.cameras):
        for gi, gr in enumerate(sw.grid_rates):
          for gj, gd in enumerate(sw.grid_depths):
            if (float(gr), float(gd)) in allowed:
              cases.append((ri, bi, ci, gi, gj))
              rows.append(th_of(gr, gd))
              cam_qpm.append(bucket.discretize(gr, gd))
              sw_qpm.append(bucket.discretize(r, b * n))
              cams.append(n)
  tot = run_chunked(
    np.stack(rows), settings(cams, cam_qpm, sw_qpm), metrics_tr, rewards_tr, idx_tr, chunk=chunk
  )
  gain = per_image(tot, cams, idx_tr.shape[0], idx_tr.shape[1])["gain"]
  shape = (len(sw.rates), len(sw.depths), len(sw.cameras), len(sw.grid_rates), len(sw.grid_depths))
  scores = np.full(shape, np.nan)
  for case, gv in zip(cases, gain, strict=True):
    scores[case] = gv
  flat = scores.reshape(*shape[:3], -1)
  arg = np.nanargmax(flat, axis=-1)
  best = np.stack(
    [np.asarray(sw.grid_rates)[arg // shape[4]], np.asarray(sw.grid_depths)[arg % shape[4]]], axis=-1
  )
  return {"scores": scores, "best": best}


STRATEGIES = ("isolated", "hierarchical", "smart", "per_camera")


def evaluate(th_of, sw: Sweep, best, metrics_ts, rewards_ts, idx_ts, *, chunk: int) -> dict[str, np.ndarray]:
  """The strategies on the test streams: loss terms per [R, B, C] and the switch's histograms.

  isolated: (r, b) and its policy per camera; hierarchical: the searched (r_i, b_i) and its
  policy; smart: the policy of (r, N b) at the switch; per_camera: isolated with no switch.
  Returns per strategy "gain", "granted", "fired", "occupancy" (mean n_g / m_g) [R, B, C] and
  "histogram" [R, B, C, H] (fraction of camera arrivals that found the switch with n units).
  """
  rows, cam_qpm, sw_qpm, cams, smart = [], [], [], [], []
  for ri, r in enumerate(sw.rates):
    for bi, b in enumerate(sw.depths):
      for ci, n in enumerate(sw.cameras):
        agg = bucket.discretize(r, b * n)
        rb_h = tuple(float(x) for x in best[ri, bi, ci])
        for (rr, bb), qg, sm in (
          ((r, b), agg, False),
          (rb_h, agg, False),
          ((r, b * n), agg, True),
          ((r, b), OPEN_SWITCH, False),
        ):
          rows.append(th_of(rr, bb))
          cam_qpm.append(OPEN_SWITCH if sm else bucket.discretize(rr, bb))
          sw_qpm.append(qg)
          cams.append(n)
          smart.append(sm)
  hist_size = 1 + max(q[2] for q in sw_qpm)
  sets = settings(cams, cam_qpm, sw_qpm, smart)
  tot = run_chunked(np.stack(rows), sets, metrics_ts, rewards_ts, idx_ts, chunk=chunk, hist_size=hist_size)
  avg = per_image(tot, cams, idx_ts.shape[0], idx_ts.shape[1])
  m_g = np.asarray([q[2] for q in sw_qpm], np.float64)
  avg["occupancy"] = avg.pop("occupancy_units") / m_g
  avg["histogram"] = tot.histogram / tot.histogram.sum(-1, keepdims=True)
  shape = (len(sw.rates), len(sw.depths), len(sw.cameras), len(STRATEGIES))
  return {
    s: {k: np.moveaxis(v.reshape(*shape, *v.shape[1:]), 3, 0)[i] for k, v in avg.items()}
    for i, s in enumerate(STRATEGIES)
  }


def strategies(
  train, test, sw: Sweep, key, *, train_shape, test_shape, gamma, max_sweeps, chunk, show_progress=False
) -> dict:
  """`runtest_mcam`: policies of every setting, the grid search on training streams, the test.

  train, test: metric-sorted splits (offload.data.Split); train_shape / test_shape: (slots,
  streams). Returns the search, the strategies' terms (`evaluate`), the weak and strong losses
  per camera count on the test streams and the seconds of each part.
  """
  from offload import mdp

  t0 = time.perf_counter()
  pts = policy_settings(sw)
  th = mdp.thresholds_grid(
    train.metrics, train.rewards, [p[0] for p in pts], [p[1] for p in pts], gamma=gamma, max_sweeps=max_sweeps
  )
  row = {p: i for i, p in enumerate(pts)}
  th_of = lambda r, b: th[row[(float(r), float(b))]]
  k_tr, k_ts = jax.random.split(key)
  ncam = max(sw.cameras)
  idx_tr = streams(k_tr, len(train.metrics), *train_shape, ncam)
  idx_ts = streams(k_ts, len(test.metrics), *test_shape, ncam)
  t1 = time.perf_counter()
  desc = "offload: multi-camera search" if show_progress else ""
  found = search(th_of, sw, train.metrics, train.rewards, idx_tr, chunk=chunk, desc=desc)
  t2 = time.perf_counter()
  res = evaluate(th_of, sw, found["best"], test.metrics, test.rewards, idx_ts, chunk=chunk)
  t3 = time.perf_counter()
  idx = np.asarray(idx_ts)
  weak = np.asarray([test.wcost[idx[:, :, :n]].mean() for n in sw.cameras])
  strong = np.asarray([test.scost[idx[:, :, :n]].mean() for n in sw.cameras])
  return {
    **found,
    "strategies": res,
    "weak": weak,
    "strong": strong,
    "policies": len(pts),
    "searched": int(np.isfinite(found["scores"]).sum()),
    "seconds": {"policies": t1 - t0, "search": t2 - t1, "test": t3 - t2},
  }


def losses(out: dict) -> dict[str, np.ndarray]:
  """Average loss per camera image [R, B, C] per strategy: the weak loss minus the gain."""
  return {s: out["weak"][None, None, :] - v["gain"] for s, v in out["strategies"].items()}
