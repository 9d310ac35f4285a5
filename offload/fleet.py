"""A fleet of cameras behind one switch on the serving runtime (`config.deploy.cameras` > 1).

The multi-camera simulator's strategies (`offload.multicam`) as N device processes against one
server: camera j runs the single-device deploy's loop (`offload.deploy`: weak TFLite, metric,
policy, its own token bucket) on its own stream (seed `deploy.stream_seeds[j]`), and the server
enforces the switch as admission control (`common.serving.admission`): the aggregate bucket
(q_g, p_g, m_g) = discretize(r, N b) of the per-camera share (r, b), refilled by N q_g units per
slot of 1 / fps s (the simulator's switch gains q_g per camera arrival, N arrivals a slot). A
request the switch refuses is answered RESOURCE_EXHAUSTED at once and the camera keeps its weak
result (counted refused).

- isolated: every camera keeps (r, b) and its MDP policy;
- hierarchical: every camera gets the (r_i, b_i) the run's multicam step chose for (r, b, N)
  (`multicam.json`'s `best`) and its MDP policy;
- smart: the policy of (r, N b) decides at the switch on the switch's units (`--switch=...,
  POLICY.json`); a camera sends every image that some unit count would offload, with its metric
  as the request's parameter `metric`, and keeps the others.

The policies are the multicam step's own (`mdp.thresholds_grid` over the same settings, so the
same thresholds), and `predict` runs `multicam.simulate` on the very images the cameras saw.
Within a slot the simulator serves the cameras in index order and refills the switch after each
arrival; the server refills once per slot and serves requests as they arrive, so the two differ
only where the switch is short within a slot: `replay` is the server's rule on the same streams
for any order of arrival within each slot, and the report gives its spread over random orders.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np

from common import config as cfg_lib
from common import safeio
from common.errors import CheckpointError, ConfigError

STRATEGIES = ("isolated", "hierarchical", "smart")
PLAN_FILE = "fleet_plan.json"
ORDERS = 32  # random within-slot arrival orders of the replay's spread


def check(c) -> None:
  """The fleet's keys of `config.deploy` (ConfigError naming the key); cameras = 1 is one device."""
  cfg_lib.check_range(c, "deploy.cameras", 1, 64, integer=True)
  cfg_lib.check_choice(c, "deploy.strategy", ("all", *STRATEGIES))
  seeds = c.deploy.stream_seeds
  if not isinstance(seeds, tuple | list):
    raise ConfigError(f"config.deploy.stream_seeds = {seeds!r}: must be a tuple of integer seeds")
  for i, s in enumerate(seeds):
    if isinstance(s, bool) or not isinstance(s, int) or not 0 <= s <= cfg_lib.SEED_MAX:
      raise ConfigError(
        f"config.deploy.stream_seeds[{i}] = {s!r}: must be an integer in [0, {cfg_lib.SEED_MAX}]"
      )
  n = c.deploy.cameras
  if seeds and len(seeds) != n:
    raise ConfigError(
      f"config.deploy.stream_seeds has {len(seeds)} seeds for config.deploy.cameras = {n}: give one per "
      "camera, or none (camera j: stream_seed + j)"
    )
  for key, allowed in (("share_rate", c.multicam.rates), ("share_depth", c.multicam.depths)):
    v = c.deploy[key]
    if v is not None and (isinstance(v, bool) or not isinstance(v, int | float) or v not in allowed):
      raise ConfigError(
        f"config.deploy.{key} = {v!r}: must be one of config.multicam.{key.split('_')[1]}s {list(allowed)} "
        "(the shares the multicam step searched)"
      )
  if n > 1 and c.deploy.policy == "dqn":
    raise ConfigError(
      "config.deploy.policy = 'dqn': a fleet (config.deploy.cameras > 1) runs the MDP policies"
    )
  if n > 1 and c.deploy.arrivals == "markov":
    raise ConfigError(
      "config.deploy.arrivals = 'markov': a fleet (config.deploy.cameras > 1) has periodic arrivals, one image "
      "per camera per slot, as the multi-camera simulator"
    )


def share(settings: dict, c) -> tuple[float, float]:
  """The per-camera share (r, b): deploy.share_rate / share_depth, else the run's multicam first."""
  r = settings.get("share_rate")
  b = settings.get("share_depth")
  return float(c.multicam.rates[0] if r is None else r), float(c.multicam.depths[0] if b is None else b)


def hierarchical_pick(settings: dict, c, workdir: Path) -> tuple[float, float]:
  """The (r_i, b_i) the run's multicam step chose for the share and N cameras (multicam.json)."""
  step = f"run `edgeinfer offload multicam --config=... --workdir={workdir}`"
  mc = safeio.load_json_if_present(workdir / "multicam.json", what="multicam results")
  if mc is None or "best" not in mc:
    raise CheckpointError(
      f"{workdir / 'multicam.json'} is missing; the hierarchical strategy needs it: {step}"
    )
  (r, b), n = share(settings, c), settings["cameras"]
  try:
    i, j, k = mc["rates"].index(r), mc["depths"].index(b), mc["cameras"].index(n)
  except ValueError:
    raise ConfigError(
      f"config.deploy.cameras = {n} with the share ({r}, {b}): {workdir / 'multicam.json'} has cameras "
      f"{mc['cameras']}, rates {mc['rates']}, depths {mc['depths']}; set config.multicam to include it and {step}"
    ) from None
  ri, bi = mc["best"][i][j][k]
  return float(ri), float(bi)


def strategy_settings(settings: dict, c, workdir: Path) -> dict:
  """Per strategy run: the camera's (rate, depth) and whether it is the smart switch's policy."""
  r, b = share(settings, c)
  names = list(STRATEGIES) if settings["strategy"] == "all" else [settings["strategy"]]
  out = {
    "isolated": ((r, b), False),
    "hierarchical": (hierarchical_pick(settings, c, workdir), False) if "hierarchical" in names else None,
    "smart": ((r, b * settings["cameras"]), True),
  }
  return {s: out[s] for s in names}


def plan(c, data, workdir: Path, settings: dict) -> dict:
  """The fleet's strategies: each camera's bucket and thresholds, the switch, the streams' seeds."""
  from offload import bucket, mdp, multicam

  n = settings["cameras"]
  per = strategy_settings(settings, c, workdir)
  m = c.multicam
  sw = multicam.Sweep(*(tuple(m[k]) for k in multicam.Sweep._fields))
  pts = multicam.policy_settings(sw)  # the multicam step's one call: the very same thresholds
  pts += [rb for rb, _ in per.values() if rb not in pts]
  th = mdp.thresholds_grid(data.train.metrics, data.train.rewards, [p[0] for p in pts], [p[1] for p in pts],
                           gamma=c.mdp.discount, max_sweeps=m.mdp_sweeps)  # fmt: skip
  r, b = share(settings, c)
  q_g, p_g, m_g = bucket.discretize(r, b * n)
  seeds = list(settings["stream_seeds"]) or [settings["stream_seed"] + j for j in range(n)]
  out = {"cameras": n, "share": [r, b], "switch": [q_g, p_g, m_g], "seeds": seeds, "strategies": {}}
  for s, ((rr, bb), smart) in per.items():
    row = th[pts.index((rr, bb))]
    cam = multicam.OPEN_SWITCH if smart else bucket.discretize(rr, bb)
    out["strategies"][s] = {
      "rate": rr, "depth": bb, "smart": smart, "qpm": [int(x) for x in cam],
      "threshold": [None if not math.isfinite(v) else float(v) for v in row],
    }  # fmt: skip
  return out


def server_flags(model: str, pl: dict, fps: float, out_dir: Path) -> list[str]:
  """`--switch`: the aggregate bucket refilled by N q_g per slot, and the smart policy's thresholds."""
  q_g, p_g, m_g = pl["switch"]
  flag = f"--switch={model}={pl['cameras'] * q_g},{p_g},{m_g},{1e3 / fps!r}"
  if "smart" in pl["strategies"]:
    path = out_dir / "switch_policy.json"
    path.write_text(json.dumps({"threshold": pl["strategies"]["smart"]["threshold"]}))
    flag += f",{path}"
  return [flag]


def thresholds(row) -> np.ndarray:
  return np.asarray([np.inf if v is None else v for v in row], np.float64)


def start_time(go_s: float, pl: dict, fps: float) -> float:
  """The first frame's time: on the switch's slot grid, after the switch has refilled to full."""
  q_g, _, m_g = pl["switch"]
  slot = 1.0 / fps
  refill = math.ceil(m_g / max(pl["cameras"] * q_g, 1)) + 2
  return (math.ceil(go_s / slot) + refill) * slot + 0.002


def wait_until(t_s: float) -> None:
  """Sleeps until `time.monotonic()` reaches t_s (the last millisecond spinning)."""
  while (left := t_s - time.monotonic()) > 0:
    time.sleep(left - 0.001 if left > 0.002 else 0)


def device(dep, client, link, settings: dict, progress=None) -> dict:
  """Camera `settings["camera"]` of the fleet: one stream per strategy, each started with the
  others at the runner's barrier, on the switch's slot grid, with the switch full."""
  from common.serving import runner
  from offload import deploy as odeploy
  from offload import metrics as om

  pl = safeio.load_json(settings["fleet_plan"], what="fleet plan", keys=("strategies", "seeds"))
  j, fps, frames = settings["camera"], settings["fps"], settings["frames"]
  seq, iv, c = odeploy.draw_stream(dep, frames, pl["seeds"][j], order=settings["order"] or "iid",
                                   arrivals="periodic")  # fmt: skip
  odeploy.warm_up(client, dep.images[seq[0]])
  _warm_step(dep, seq, iv, c)
  rtt = client.base_rtt_s()
  runs = {}
  for name, st in pl["strategies"].items():
    th = thresholds(st["threshold"])
    if st["smart"]:  # the switch decides; the camera keeps what no unit count would offload
      low = float(th[np.isfinite(th)].min()) if np.isfinite(th).any() else np.inf
      want = lambda k, z, n, hist, low=low: z >= low
    else:
      want = lambda k, z, n, hist, th=th: z >= th[n]
    wait_until(start_time(runner.sync(settings, name), pl, fps) - 0.05)
    summ, fr = odeploy.stream(dep, client, link, want, seq, iv, st["qpm"], om.COSTS[c.metrics.cost], fps=fps,
                              deadline_s=settings["deadline"], rtt_s=rtt, progress=progress,
                              send_metric=st["smart"])  # fmt: skip
    runs[name] = {"summary": summ, "frames": fr}
  return {
    "camera": j,
    "seed": pl["seeds"][j],
    "strategies": runs,
    "summary": {s: r["summary"] for s, r in runs.items()},
    "rtt_s": rtt,
    "link": link.kind,
    "trace": {"name": link.trace.name, "mean_bps": link.trace.mean_bps()} if link.trace else None,
  }


def _warm_step(dep, seq, iv, c) -> None:
  """The device's step once before any stream (its first call's setup: the interpreter, the
  bucket's jnp ops), so that the first frames of the first strategy are not late."""
  from offload import deploy as odeploy
  from offload import metrics as om

  step, _ = odeploy.make_step(dep, lambda *a: False, seq[:1], iv[:1], (1, 1, 1), om.COSTS[c.metrics.cost])
  step(0, None)


def streams(dep, pl: dict, settings: dict) -> np.ndarray:
  """The cameras' image indices [frames, N], drawn again as each camera drew its own."""
  from offload import deploy as odeploy

  order = settings["order"] or "iid"
  return np.stack(
    [
      odeploy.draw_stream(dep, settings["frames"], s, order=order, arrivals="periodic")[0]
      for s in pl["seeds"]
    ],
    axis=1,
  )


def replay(th, cam_qpm, pl: dict, smart: bool, metrics, rewards, idx_TxN, order_TxN) -> tuple[float, int]:
  """The server's rule on the streams: the switch refilled by N q_g at each slot's start, the
  cameras served in `order_TxN[t]` within slot t. (gain per camera image, offloads granted)."""
  (q_i, p_i, m_i), (q_g, p_g, m_g) = cam_qpm, pl["switch"]
  t_len, n = idx_TxN.shape
  m_tn, r_tn = metrics[idx_TxN], rewards[idx_TxN]
  n_i, n_g, gain, granted = np.full(n, m_i), m_g, 0.0, 0
  for t in range(t_len):
    n_g = min(m_g, n_g + n * q_g) if t else n_g
    send = (m_tn[t] >= th[n_i]) & (n_i >= p_i)
    n_i = np.minimum(m_i, n_i - p_i * send + q_i)
    for j in order_TxN[t]:
      want = m_tn[t, j] >= th[n_g] if smart else send[j]
      if want and n_g >= p_g:
        n_g, gain, granted = n_g - p_g, gain + r_tn[t, j], granted + 1
  return gain / (t_len * n), granted


def simulate(dep, pl: dict, idx_TxN: np.ndarray) -> dict:
  """Per strategy: `multicam.simulate` on the same streams (index order, refilled per arrival) and
  the server's rule over the index order and `ORDERS` random within-slot orders (`replay`)."""
  from offload import multicam

  ts, n, t_len = dep.data.test, pl["cameras"], idx_TxN.shape[0]
  names = list(pl["strategies"])
  rows = [thresholds(pl["strategies"][s]["threshold"]) for s in names]
  th = np.stack([np.pad(r, (0, max(map(len, rows)) - len(r)), constant_values=np.inf) for r in rows])
  sets = multicam.settings([n] * len(names), [pl["strategies"][s]["qpm"] for s in names],
                           [pl["switch"]] * len(names), [pl["strategies"][s]["smart"] for s in names])  # fmt: skip
  tot = multicam.simulate(th, sets, ts.metrics, ts.rewards, idx_TxN[:, None, :])
  avg = multicam.per_image(tot, [n] * len(names), t_len, 1)
  weak = float(ts.wcost[idx_TxN].mean())
  rng = np.random.default_rng(0)
  orders = [np.tile(np.arange(n), (t_len, 1))] + [rng.permuted(np.tile(np.arange(n), (t_len, 1)), axis=1)
                                                 for _ in range(ORDERS)]  # fmt: skip
  out = {}
  for g, s in enumerate(names):
    st = pl["strategies"][s]
    rep = [replay(th[g], st["qpm"], pl, st["smart"], ts.metrics, ts.rewards, idx_TxN, o) for o in orders]
    losses = [weak - x[0] for x in rep]
    out[s] = {
      "loss": weak - float(avg["gain"][g]),
      "weak_loss": weak,
      "strong_loss": float(ts.scost[idx_TxN].mean()),
      "fired": float(avg["fired"][g]),
      "granted": float(avg["granted"][g]),
      "server_rule_loss": losses[0],
      "server_rule_spread": [min(losses), max(losses)],
      "server_rule_granted": [min(x[1] for x in rep), max(x[1] for x in rep)],
    }
  return out
