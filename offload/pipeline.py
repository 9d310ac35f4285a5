"""The offload pipeline as steps over one workdir (`STEPS`, run by `common.app`).

  metrics  : the per-image offloading metrics (source "digits": train the weak/strong CNN pair
             and write workdir/metrics/fold*_cost*.npz; "npz" / "synthetic" need no step)
  train    : the DQN rows by fitted Q-iteration -> workdir/checkpoints (resumes; raising
             config.dqn.iterations continues)
  simulate : every policy on the test streams (+ the exports) -> results.json, result.npz,
             exports/, then report.md and loss_vs_rate.png (`offload.report`)
  multicam : N cameras behind one switch, isolated / hierarchical / smart (`offload.multicam`)
             -> multicam.json, multicam.npz (and the report's multi-camera sections)
  robust   : MDP and baseline fitted on shifted training metrics (`offload.robust`) -> robust.json,
             robust.npz (and the report's robustness section)

Each step skips when its outputs exist: metrics when the fold's file exists, train when the
newest checkpoint has config.dqn.iterations Q-iterations, simulate when results.json was made
from the checkpoint of that many iterations.
"""

from __future__ import annotations

import io
import time
from pathlib import Path

import jax
import ml_collections
import numpy as np

from common import app, micro, provenance, safeio
from common import config as cfg_lib
from common import report as report_lib
from common.errors import ConfigError
from common.export import write_atomic
from common.serving import runner
from offload import data as odata
from offload import fleet, mdp, multicam, robust, simulate
from offload import metrics as om
from offload import report as oreport
from offload import train as train_lib

POLICIES = oreport.POLICIES


def validate(c: ml_collections.ConfigDict) -> None:
  """Checks every key (ConfigError names key, value and allowed range)."""
  cfg_lib.check_types(c, app.load_config_file("offload/configs/quick.py"))
  cfg_lib.check_seed(c)
  cfg_lib.check_numbers(c)
  _validate_deploy(c)
  cfg_lib.check_range(c, "metrics.classifiers.batch_size", 1, integer=True)
  cfg_lib.check_range(c, "metrics.classifiers.learning_rate", 0.0, lo_open=True)
  cfg_lib.check_range(c, "export.target_ram_bytes", 1024, integer=True)
  cfg_lib.check_choice(c, "metrics.source", ["digits", "npz", "synthetic"])
  if c.metrics.source == "npz" and not c.metrics.file:
    raise ConfigError("config.metrics.file is empty: source 'npz' needs the path of a metrics npz file")
  if c.metrics.source == "npz":  # the file is read (and refused) before anything is written
    from offload import data as odata

    odata.validate(odata.load_npz(c.metrics.file), str(c.metrics.file))
  cfg_lib.check_range(c, "metrics.fold", 0, integer=True)
  cfg_lib.check_choice(c, "metrics.cost", list(om.COSTS))
  cfg_lib.check_range(c, "metrics.classifiers.classifier_fraction", 0.05, 0.95)
  cfg_lib.check_range(c, "metrics.classifiers.folds", 2, 10, integer=True)
  cfg_lib.check_range(c, "metrics.classifiers.num_epochs", 1, 10_000, integer=True)
  cfg_lib.check_range(c, "metrics.classifiers.checkpoint_every", 0, integer=True)
  cfg_lib.check_positive_ints(c, "metrics.classifiers.widths_weak")
  cfg_lib.check_positive_ints(c, "metrics.classifiers.widths_strong")
  if c.metrics.source == "digits" and c.metrics.fold >= c.metrics.classifiers.folds:
    raise ConfigError(
      f"config.metrics.fold = {c.metrics.fold}: must be in [0, {c.metrics.classifiers.folds - 1}]"
    )
  rates, depths = list(c.bucket.rates), list(c.bucket.depths)
  if not rates or len(rates) != len(depths):
    raise ConfigError(
      f"config.bucket.rates = {rates} and config.bucket.depths = {depths}: must be non-empty lists of equal length"
    )
  for i, (r, b) in enumerate(zip(rates, depths, strict=True)):
    if not (isinstance(r, int | float) and 0 < r < 1):
      raise ConfigError(f"config.bucket.rates[{i}] = {r!r}: must be in (0, 1) tokens per slot")
    if not (isinstance(b, int | float) and 1 <= b <= 100):
      raise ConfigError(f"config.bucket.depths[{i}] = {b!r}: must be in [1, 100] tokens")
  _validate_stream_and_dqn(c)
  validate_multicam(c)


def _validate_stream_and_dqn(c: ml_collections.ConfigDict) -> None:
  """The stream, DQN and MDP sections."""
  cfg_lib.check_choice(c, "stream.order", list(train_lib.ORDERS))
  cfg_lib.check_choice(c, "stream.arrivals", list(train_lib.ARRIVALS))
  cfg_lib.check_range(c, "stream.spread", 0.0, 1.0)
  cfg_lib.check_range(c, "stream.reset_prob", 0.0, 1.0)
  cfg_lib.check_range(c, "stream.interval_state0", 1, 100, integer=True)
  cfg_lib.check_range(c, "stream.interval_state1", 1, 100, integer=True)
  cfg_lib.check_range(c, "stream.leave_prob_state0", 0.0, 1.0, lo_open=True)
  cfg_lib.check_range(c, "stream.leave_prob_state1", 0.0, 1.0, lo_open=True)
  for k in ("train_streams", "train_length", "test_streams", "test_length"):
    cfg_lib.check_range(c, f"stream.{k}", 2, integer=True)
  cfg_lib.check_range(c, "dqn.history_metrics", 0, 10_000, integer=True)
  cfg_lib.check_range(c, "dqn.history_intervals", -1, 10_000, integer=True)
  cfg_lib.check_range(c, "dqn.num_layers", 1, 64, integer=True)
  cfg_lib.check_range(c, "dqn.hidden_units", 1, 65_536, integer=True)
  cfg_lib.check_range(c, "dqn.learning_rate", 1e-10, 10**-0.5)
  cfg_lib.check_range(c, "dqn.iterations", 0, 10_000_000, integer=True)
  cfg_lib.check_range(c, "dqn.batch_size", 1, 1 << 20, integer=True)
  cfg_lib.check_range(c, "dqn.steps_per_iteration", 1, 1 << 20, integer=True)
  cfg_lib.check_range(c, "dqn.discount", 0.0, 1.0, lo_open=True, hi_open=True)
  cfg_lib.check_range(c, "mdp.discount", 0.0, 1.0, lo_open=True, hi_open=True)
  cfg_lib.check_range(c, "dqn.num_seeds", 1, 1024, integer=True)
  for k in ("log_every", "checkpoint_every"):
    cfg_lib.check_range(c, f"dqn.{k}", 0, integer=True)


def validate_multicam(c: ml_collections.ConfigDict) -> None:
  """The multicam and robust sections (r_i <= 0, b_i < p, N < 1, a grid with no feasible point)."""
  m = c.multicam
  multicam.check(list(m.cameras), list(m.rates), list(m.depths), list(m.grid_rates), list(m.grid_depths))
  robust.check(list(c.robust.drops), list(c.robust.rates), list(c.robust.depths))
  for k in ("multicam.train_slots", "multicam.train_streams", "multicam.test_slots", "multicam.test_streams",
            "robust.test_slots", "robust.test_streams"):  # fmt: skip
    cfg_lib.check_range(c, k, 1, 10_000_000, integer=True)
  for k in ("multicam.mdp_sweeps", "robust.mdp_sweeps", "multicam.chunk", "robust.chunk"):
    cfg_lib.check_range(c, k, 1, 10_000_000, integer=True)


# The config sections each output is made from; a reused output must have been made from the same.
# The DQN checkpoints serve a longer run (dqn.iterations raised) with another learning rate.
_CLASSIFIERS = ("seed", "metrics.classifiers", "-metrics.classifiers.checkpoint_every")
_DQN = ("seed", "metrics", "bucket", "stream", "dqn", "-metrics.classifiers.checkpoint_every",
        *(f"-dqn.{k}" for k in ("iterations", "learning_rate", "log_every", "checkpoint_every")))  # fmt: skip
DEPS = {
  "weak": _CLASSIFIERS,
  "strong": _CLASSIFIERS,
  "metrics": _CLASSIFIERS,
  "checkpoints": _DQN,
  "results.json": (*_DQN, "mdp", "export"),
  "multicam.json": (
    "seed",
    "metrics",
    "mdp",
    "multicam",
    "-multicam.chunk",
    "-metrics.classifiers.checkpoint_every",
  ),
  "robust.json": (
    "seed",
    "metrics",
    "mdp",
    "robust",
    "-robust.chunk",
    "-metrics.classifiers.checkpoint_every",
  ),
}


def _validate_deploy(c: ml_collections.ConfigDict) -> None:
  from offload import train as otrain

  runner.validate(c)
  cfg_lib.check_choice(c, "deploy.policy", ("all", "mdp", "dqn"))
  cfg_lib.check_range(c, "deploy.setting", 0, len(c.bucket.rates) - 1, integer=True)
  cfg_lib.check_range(c, "deploy.stream_seed", 0, cfg_lib.SEED_MAX, integer=True)
  cfg_lib.check_choice(c, "deploy.order", ("", *otrain.ORDERS))
  cfg_lib.check_choice(c, "deploy.arrivals", ("", *otrain.ARRIVALS))
  fleet.check(c)


def preflight(c: ml_collections.ConfigDict, workdir: Path) -> None:
  """Refuses a workdir whose outputs were made from other config values (before anything is written)."""
  provenance.check(workdir, c, DEPS)


def metrics_path(c: ml_collections.ConfigDict, workdir: Path) -> Path:
  return workdir / "metrics" / f"fold{c.metrics.fold}_cost{om.COSTS[c.metrics.cost]}.npz"


class Run:
  """What the steps share: config, workdir and (loaded once, on first use) the prepared metrics."""

  def __init__(
    self, config: ml_collections.ConfigDict, workdir: Path, *, show_progress: bool = True, title=""
  ):
    self.config, self.workdir, self.show, self.title = config, Path(workdir), show_progress, title
    self._data = None

  def data(self) -> odata.MetricsData:
    """The metrics of the configured source, prepared (z-scored, metric-sorted)."""
    if self._data is None:
      c = self.config
      if c.metrics.source == "npz":
        arrays = odata.load_npz(c.metrics.file)
      elif c.metrics.source == "synthetic":
        arrays = odata.synthetic(seed=c.seed)
      else:
        step_metrics(self)
        arrays = odata.load_npz(metrics_path(c, self.workdir))
      self._data = odata.prepare(arrays)
    return self._data


def step_metrics(run: Run) -> dict:
  """The digits classifier pair and its metrics files (source "digits"; other sources load a file)."""
  c, workdir = run.config, run.workdir
  if c.metrics.source != "digits":
    return {"source": c.metrics.source}
  path = metrics_path(c, workdir)
  if path.exists():
    return {"source": "digits", "skipped": True, "file": str(path)}
  from offload import classifiers

  provenance.record_all(workdir, c, DEPS, "weak", "strong", "metrics")
  info = classifiers.make_metrics(c, workdir, show_progress=run.show)
  report_lib.write_json(workdir / "metrics" / "classifiers.json", info)
  return {"source": "digits", "files": len(info["files"]), "weak_accuracy": info["weak_accuracy"],
          "strong_accuracy": info["strong_accuracy"]}  # fmt: skip


def step_train(run: Run) -> dict:
  done = train_lib.trained_iterations(run.workdir)
  if done is not None and done >= run.config.dqn.iterations:
    train_lib.restore_dqn(run.config, run.workdir)  # what a step skips to must be readable
    return {"iterations": done, "skipped": True}
  data = run.data()  # (the metrics step first, when its files are missing)
  provenance.record_all(run.workdir, run.config, DEPS, "checkpoints")
  return train_lib.train(run.config, data, run.workdir, show_progress=run.show)


def evaluate_policies(c, d: odata.MetricsData, tint, seq, iv, setts, net=None, state=None) -> dict:
  """Loss, offload fraction and occupancy of every policy for every setting on streams (seq, iv)."""
  ts = d.test
  ms_seen, rs_seen = ts.metrics[seq], ts.rewards[seq]
  weak, strong = float(ts.wcost[seq].mean()), float(ts.scost[seq].mean())
  periodic = c.stream.arrivals == "periodic"
  intervals_tr = None if periodic else tint
  tau = 1.0 if periodic else float(np.mean(tint))
  rs = train_lib.rows(c)
  out = {p: {"loss": [], "offload_fraction": [], "occupancy": []} for p in POLICIES}
  for si, (r, b, _) in enumerate(setts):
    thr = mdp.thresholds(d.train.metrics, d.train.rewards, r, b, gamma=c.mdp.discount, intervals=intervals_tr)
    base_th = mdp.baseline_threshold(d.train.metrics, r, tau)
    res = {
      "mdp": simulate.simulate(thr, ts.metrics, ts.rewards, seq, iv, r, b),
      "baseline": simulate.simulate(
        mdp.baseline_thresholds(d.train.metrics, r, b, tau), ts.metrics, ts.rewards, seq, iv, r, b
      ),
      "weak": {"reward": 0.0, "offload_fraction": 0.0, "occupancy": np.nan},
      "strong": {"reward": weak - strong, "offload_fraction": 1.0, "occupancy": np.nan},
      "lower_bound": {
        "reward": mdp.lower_bound_reward(ms_seen, rs_seen, base_th),
        "offload_fraction": float(np.mean(ms_seen > base_th)),
        "occupancy": np.nan,
      },
    }
    if state is not None:
      sims = []
      for ri, (s, _) in enumerate(rs):
        if s == si:
          params = jax.tree.map(lambda x, ri=ri: x[ri], state.params)
          sims.append(
            simulate.simulate(simulate.DQNPolicy(params, net), ts.metrics, ts.rewards, seq, iv, r, b)
          )
      res["dqn"] = {k: float(np.mean([x[k] for x in sims])) for k in sims[0]}
      res["dqn"]["per_seed_reward"] = [x["reward"] for x in sims]
    for p in POLICIES:
      if p in res:
        out[p]["loss"].append(weak - res[p]["reward"])
        out[p]["offload_fraction"].append(res[p]["offload_fraction"])
        out[p]["occupancy"].append(res[p]["occupancy"])
    if "dqn" in res:
      out["dqn"].setdefault("per_seed_loss", []).append([weak - x for x in res["dqn"]["per_seed_reward"]])
    out.setdefault("mdp_thresholds", []).append(thr.tolist())
  out["weak_loss"], out["strong_loss"] = weak, strong
  return out


def export_policies(c, d: odata.MetricsData, setts, net, state, thresholds, seq, iv, workdir: Path) -> dict:
  """Exports the first setting's DQN (TFLite float / int8, ONNX) and every setting's MDP thresholds."""
  from offload import dqn as dqn_lib
  from offload import export as oexport

  out = workdir / "exports"
  for (r, b, qpm), th in zip(setts, thresholds, strict=True):
    oexport.export_thresholds(np.asarray(th), qpm, out / f"mdp_r{r}_b{b}.json", mean=d.mean, std=d.std)
  params = jax.tree.map(lambda x: x[0], state.params)
  n = min(512, seq.shape[1] - 1)
  ms = jax.numpy.asarray(d.test.metrics[seq[:1]])
  x = np.asarray(
    dqn_lib.features(ms, jax.numpy.asarray(iv[:1]), np.zeros(n, np.int32), np.arange(1, n + 1), net.config)
  )
  ram = micro.target_ram_bytes(c, "export.target_ram_bytes")
  res = oexport.export_dqn(net, params, x, setts[0][2].p, out, int8=c.export.int8, ram_bytes=ram)
  return {**res, "parity_inputs": len(x)}


def _save_arrays(res: dict, setts, workdir: Path) -> None:
  arrays = {f"{p}_{k}": np.asarray(res[p][k], np.float64) for p in POLICIES for k in oreport.ARRAY_KEYS}
  arrays.update(
    tr=np.asarray([s[0] for s in setts]),
    tb=np.asarray([s[1] for s in setts]),
    weak=res["weak_loss"],
    strong=res["strong_loss"],
  )
  buf = io.BytesIO()
  np.savez(buf, **arrays)
  write_atomic(workdir / "result.npz", buf.getvalue())


def step_simulate(run: Run) -> dict:
  """Every policy on the test streams -> results.json, result.npz (and exports/)."""
  c, workdir = run.config, run.workdir
  results = safeio.load_json_if_present(workdir / "results.json")
  done = train_lib.trained_iterations(workdir)
  if results is not None and done is not None and results.get("dqn_iterations") == done:
    return {**results, "skipped": True}
  d = run.data()
  setts = train_lib.settings(c)
  net, state = train_lib.restore_dqn(c, workdir)
  provenance.record(workdir / "results.json", c, DEPS["results.json"])
  _, tint = train_lib.training_pool(c, d.train)
  s = c.stream
  seq, iv = train_lib.streams(
    c, train_lib.keys(c)["test"], len(d.test.metrics), s.test_streams, s.test_length
  )
  t0 = time.time()
  res = evaluate_policies(c, d, tint, seq, iv, setts, net, state)
  sim_s = time.time() - t0
  _save_arrays(res, setts, workdir)
  losses = {p: res[p]["loss"] for p in POLICIES}
  summary = {
    "settings": [{"tr": r, "tb": b, "qpm": list(qpm)} for r, b, qpm in setts],
    "losses": losses,
    "offload_fraction": {p: res[p]["offload_fraction"] for p in POLICIES},
    "occupancy": {p: res[p]["occupancy"] for p in ("baseline", "mdp", "dqn")},
    "dqn_per_seed_loss": res["dqn"].get("per_seed_loss"),
    "simulation_seconds": sim_s,
    "streams": [s.test_streams, s.test_length],
    "train_images": len(d.train.metrics),
    "test_images": len(d.test.metrics),
    "dqn_iterations": int(np.asarray(state.it)[0]),
    "ordering": [
      dq <= md <= ba for dq, md, ba in zip(losses["dqn"], losses["mdp"], losses["baseline"], strict=True)
    ],
  }
  if c.export.enabled:
    summary["export"] = export_policies(c, d, setts, net, state, res["mdp_thresholds"], seq, iv, workdir)
  report_lib.write_json(workdir / "results.json", summary)
  return summary


def _save_npz(path: Path, arrays: dict) -> None:
  buf = io.BytesIO()
  np.savez(buf, **arrays)
  write_atomic(path, buf.getvalue())


def _step_key(c, name: str) -> jax.Array:
  return jax.random.fold_in(jax.random.key(c.seed), {"multicam": 1, "robust": 2}[name])


def step_multicam(run: Run) -> dict:
  """The three strategies for every (r, b, N) -> multicam.json, multicam.npz."""
  c, workdir = run.config, run.workdir
  done = safeio.load_json_if_present(workdir / "multicam.json")
  if done is not None:
    return {**done, "skipped": True}
  d, m = run.data(), c.multicam
  sw = multicam.Sweep(*(tuple(m[k]) for k in multicam.Sweep._fields))
  provenance.record(workdir / "multicam.json", c, DEPS["multicam.json"])
  out = multicam.strategies(
    d.train, d.test, sw, _step_key(c, "multicam"), train_shape=(m.train_slots, m.train_streams),
    test_shape=(m.test_slots, m.test_streams), gamma=c.mdp.discount, max_sweeps=m.mdp_sweeps, chunk=m.chunk,
    show_progress=run.show,
  )  # fmt: skip
  loss = multicam.losses(out)
  arrays = {f"{s}_{k}": v for s, res in out["strategies"].items() for k, v in res.items()}
  arrays.update({f"{s}_loss": v for s, v in loss.items()}, scores=out["scores"], best=out["best"])
  arrays.update(weak=out["weak"], strong=out["strong"])
  _save_npz(workdir / "multicam.npz", arrays)
  summary = {
    **{k: list(getattr(sw, k)) for k in multicam.Sweep._fields},
    "loss": {s: v.tolist() for s, v in loss.items()},
    "occupancy": {s: out["strategies"][s]["occupancy"].tolist() for s in multicam.STRATEGIES},
    "dropped_at_switch": {
      s: (out["strategies"][s]["fired"] - out["strategies"][s]["granted"]).tolist()
      for s in multicam.STRATEGIES
    },
    "best": out["best"].tolist(),
    "weak": out["weak"].tolist(),
    "strong": out["strong"].tolist(),
    "policies": out["policies"],
    "searched_settings": out["searched"],
    "seconds": out["seconds"],
    "ordering": (loss["isolated"] >= loss["hierarchical"]).tolist(),
  }
  report_lib.write_json(workdir / "multicam.json", summary)
  return summary


def step_robust(run: Run) -> dict:
  """MDP and baseline fitted on shifted training metrics, tested on the true ones -> robust.json/.npz."""
  c, workdir = run.config, run.workdir
  done = safeio.load_json_if_present(workdir / "robust.json")
  if done is not None:
    return {**done, "skipped": True}
  d, r = run.data(), c.robust
  provenance.record(workdir / "robust.json", c, DEPS["robust.json"])
  t0 = time.time()
  out = robust.study(
    d.train, d.test, list(r.drops), list(r.rates), list(r.depths), _step_key(c, "robust"),
    test_shape=(r.test_slots, r.test_streams), gamma=c.mdp.discount, max_sweeps=r.mdp_sweeps, chunk=r.chunk,
  )  # fmt: skip
  _save_npz(workdir / "robust.npz", {k: np.asarray(v) for k, v in out.items()})
  summary = {"rates": list(r.rates), "depths": list(r.depths), "seconds": time.time() - t0}
  summary.update({k: np.asarray(v).tolist() for k, v in out.items()})
  report_lib.write_json(workdir / "robust.json", summary)
  return summary


def _write_report(run: Run) -> None:
  if (run.workdir / "results.json").exists():
    oreport.write_report(run.config, run.workdir, title=run.title)


def _reported(step):
  return app.reported(step, _write_report)


STEPS = {
  "metrics": app.Step(step_metrics, "the digits classifier pair and its metrics files (workdir/metrics)"),
  "train": app.Step(step_train, "the DQN rows by fitted Q-iteration (workdir/checkpoints; resumes)"),
  "simulate": app.Step(
    _reported(step_simulate), "every policy on the test streams, exports; results.json, report.md"
  ),
  "multicam": app.Step(
    _reported(step_multicam), "N cameras behind one switch: isolated / hierarchical / smart; multicam.json"
  ),
  "robust": app.Step(_reported(step_robust), "MDP and baseline fitted on shifted metrics; robust.json"),
  **runner.app_steps("offload", lambda run: run.config),
}
ALL = ("metrics", "train", "simulate")
STUDIES = ("multicam", "robust")  # run by name (`edgeinfer offload multicam robust`), not by `all`


def run_steps(names, config, workdir, *, show_progress: bool = True, title: str = "") -> dict[str, dict]:
  """Runs steps as `edgeinfer offload` does (validate, save config.json, one Run); returns their results."""
  context = lambda c, w: Run(c, Path(w), show_progress=show_progress, title=title)
  spec = app.App("offload", STEPS, validate=validate, preflight=preflight, context=context)
  return app.run_steps(spec, config, workdir, list(names))
