"""NN-Stretch as steps over one workdir (`edgeinfer branching <step>`).

  count      MACs and params of the network (as the model runs and as pycls reports); writes nothing
  calibrate  the cost model against the 30 published latencies (in-sample and leave-one-model-out)
             -> calibration.json, report.md
  search     stretches the single-branch network over the processors -> <out> or <workdir>/<name>.yaml
  train      the original and the stretched net with the same recipe and seed -> original/, stretched/,
             train.json
  export     tagged TFLite of both nets and their per-branch subgraphs -> exports/, export.json
  run        train, export, search (search.json), calibration (calibration.json), the `host`
             calibration and the measured branch-parallel speedup (measure.json) -> summary.json, report.md

`count`, `search` and `calibrate` take the network, processors, constraints, image size and phone
from `config.search`, each overridden by a flag of `branching.main` (`--network`, `--processors`,
...). Every step of `run` skips when its output exists in the workdir (training resumes from its
checkpoints); `branching.report` writes report.md from the JSON outputs.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Mapping
from pathlib import Path

import ml_collections
import numpy as np

from branching import costmodel, flops, measure, network, search
from branching import export as bexport
from branching import report as breport
from branching import train as btrain
from common import app, provenance, safeio
from common import config as ccfg
from common import export as cexport
from common import report as report_lib
from common.errors import ConfigError

# Settings of count / search / calibrate: flag name -> key under config.search.
SETTINGS = {
  "network": "model",
  "image_size": "image_size",
  "phone": "phone",
  "processors": "processors",
  "alpha": "alpha",
  "beta": "beta",
  "gamma": "gamma",
}


@dataclasses.dataclass(frozen=True)
class Settings:
  """What count, search and calibrate work on (config.search, each key overridable by its flag)."""

  network: str
  image_size: int
  phone: str
  processors: tuple[str, ...]
  alpha: float
  beta: float
  gamma: float
  out: str = ""  # search: where the YAML goes ("" = <workdir>/<name>.yaml)
  flags: frozenset = frozenset()  # the settings given as flags (named so in error messages)


def settings(config: ml_collections.ConfigDict, overrides: Mapping | None = None) -> Settings:
  """`config.search` with the given flag values (None = not given) in place of its keys."""
  given = {k: v for k, v in (overrides or {}).items() if v is not None}
  values = {name: given.get(name, config.search[key]) for name, key in SETTINGS.items()}
  values["processors"] = tuple(values["processors"])
  return Settings(**values, out=given.get("out", ""), flags=frozenset(given))


def phones() -> list[str]:
  return sorted(p.name for p in network.PUBLISHED_DIR.iterdir() if p.is_dir())


def check_settings(s: Settings) -> None:
  """ConfigError (naming the flag or the config key) for any setting out of range."""

  def bad(name, allowed):
    where = f"--{name}" if name in s.flags else f"config.search.{SETTINGS[name]}"
    return ConfigError(f"{where} = {getattr(s, name)!r}: {allowed}")

  def number(name, lo, hi, lo_open=False):
    v = getattr(s, name)
    ok = isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    if not ok or v < lo or v > hi or (lo_open and v == lo):
      raise bad(name, f"must be a number in {'(' if lo_open else '['}{lo}, {hi}]")

  if isinstance(s.image_size, bool) or not isinstance(s.image_size, int) or not 8 <= s.image_size <= 4096:
    raise bad("image_size", "must be an integer in [8, 4096]")
  if s.phone not in phones():
    raise bad("phone", f"must be one of {phones()}")
  procs = s.processors
  if not procs or len(set(procs)) != len(procs) or any(p not in network.DEVICES for p in procs):
    raise bad("processors", f"must be distinct processors from {list(network.DEVICES)}, e.g. cpu,dsp")
  number("alpha", 0.0, 1.0)
  number("beta", 0.0, float(len(procs)))
  number("gamma", 0.0, 10.0, lo_open=True)
  try:
    network.load(s.network)
  except ConfigError as e:
    where = "--network" if "network" in s.flags else "config.search.model"
    raise ConfigError(f"{where}: {e}") from None


# The config sections each output is made from (the networks by their content, not their file
# names; `search` is the settings of count/search/calibrate); a reused output must match.
_TRAIN = ("seed", "data", "train", "-train.show_progress", "-train.checkpoint_every")
_BOTH = (*_TRAIN, "original", "stretched")
DEPS = {
  "original": (*_TRAIN, "original"),
  "stretched": (*_TRAIN, "stretched"),
  "train.json": _BOTH,
  "export.json": _BOTH,
  "measure.json": (*_BOTH, "run"),
  "search.json": ("search",),
}


def provenance_view(config: ml_collections.ConfigDict, s: Settings) -> dict:
  """The config as the outputs depend on it: network YAMLs replaced by what they hold."""
  view = config.to_dict()
  for role in ("original", "stretched"):
    view[role] = network.to_dict(network.load(config[role]))
  view["search"] = {k: v for k, v in dataclasses.asdict(s).items() if k not in ("out", "flags")}
  view["search"]["network"] = network.to_dict(network.load(s.network))
  return view


def preflight(config: ml_collections.ConfigDict, workdir: Path, overrides: Mapping | None = None) -> None:
  """Refuses a workdir whose outputs were made from other config values (before anything is written)."""
  provenance.check(workdir, provenance_view(config, settings(config, overrides)), DEPS)


def validate(config: ml_collections.ConfigDict, overrides: Mapping | None = None) -> None:
  """Checks every key the steps read and the flag overrides, before anything is written."""
  ccfg.check_types(config, app.load_config_file("branching/configs/quick.py"))
  btrain.validate(config)
  ccfg.check_range(config, "run.image_size", 8, 1024, integer=True)
  ccfg.check_range(config, "run.threads", 1, 64, integer=True)
  ccfg.check_range(config, "run.repeats", 1, 100_000, integer=True)
  ccfg.check_range(config, "run.calibration_models", 1, len(measure.SCALES), integer=True)
  ccfg.check_choice(config, "run.lomo", (True, False))
  ccfg.check_choice(config, "train.show_progress", (True, False))
  for key in ("original", "stretched"):
    try:
      network.load(config[key])
    except ConfigError as e:
      raise ConfigError(f"config.{key}: {e}") from None
  check_settings(settings(config, overrides))


class Run:
  """What the steps share: config, workdir, settings, and the trained nets (trained at most once)."""

  def __init__(self, config, workdir: Path, overrides: Mapping | None = None):
    self.config, self.workdir = config, Path(workdir)
    self.settings = settings(config, overrides)
    self._trained: dict | None = None
    self._view: dict | None = None

  def stamp(self, *names: str) -> None:
    """Stamps outputs `names` with the config they are about to be made from (see DEPS)."""
    if self._view is None:
      self._view = provenance_view(self.config, self.settings)
    provenance.record_all(self.workdir, self._view, DEPS, *names)

  def path(self, name: str) -> Path:
    return self.workdir / name

  def trained(self) -> dict:
    """{"original", "stretched"}: each `train.train_one`'s result (resumed from checkpoints); the
    first call also writes train.json."""
    if self._trained is None:
      c, t0 = self.config, time.time()
      self.stamp("original", "stretched", "train.json")
      self._trained = btrain.train_and_evaluate(c, self.workdir, show_progress=c.train.show_progress)
      if not self.path("train.json").exists():
        keys = ("name", "ema_accuracy", "accuracy", "macs", "params")
        done = {role: {k: r[k] for k in keys} for role, r in self._trained.items()}
        report_lib.write_json(self.path("train.json"), {**done, "train_seconds": time.time() - t0})
    return self._trained


# ---------------------------------------------------------------- compute (no workdir)


def calibration(phone: str = "mi", lomo: bool = True) -> dict:
  """The cost model against the published latencies: per-config rows, error summary, coefficients."""
  table = costmodel.default_table(phone)
  rows_lomo = {r["config"]: r for r in costmodel.leave_one_model_out(phone)} if lomo else {}
  rows, errs, errs_in = [], [], []
  for name, c, ms in costmodel.published_dataset(phone):
    pred = costmodel.predict(c, table)
    errs_in.append(abs(pred / ms - 1))
    lo = rows_lomo.get(name, {})
    if lo:
      errs.append(abs(lo["rel_err"]))
    rows.append({"config": name, "published_ms": ms, "predicted_ms": pred, "rel_err": pred / ms - 1,
                 "lomo_predicted_ms": lo.get("predicted_ms"), "lomo_rel_err": lo.get("rel_err")})  # fmt: skip
  errors = {"in_sample_median_abs_err": float(np.median(errs_in))}
  if errs:
    errors["lomo_median_abs_err"] = float(np.median(errs))
    errors["lomo_mean_abs_err"] = float(np.mean(errs))
  return {"phone": phone, "lomo": lomo, "rows": rows, "errors": errors, "coef": table.coef}


def stretch(s: Settings) -> tuple[network.NetConfig, dict]:
  """Searches the stretching of `s.network`; (the found config, the numbers and per-stage log)."""
  original = network.load(s.network)
  table = costmodel.default_table(s.phone)
  t0 = time.perf_counter()
  log: list = []
  found = search.stretch(
    original, s.processors, table=table, alpha=s.alpha, beta=s.beta, gamma=s.gamma,
    image_size=s.image_size, log=log,
  )  # fmt: skip
  secs = time.perf_counter() - t0
  dev, single_ms = search.best_single(original, s.processors, table, image_size=s.image_size)
  pred = costmodel.predict(found, table, image_size=s.image_size)
  res = {
    "original": original.name,
    "found": found.name,
    "processors": list(s.processors),
    "search_seconds": secs,
    "best_single_processor": dev,
    "best_single_ms": single_ms,
    "searched_ms": pred,
    "search_speedup": single_ms / pred,
    "searched_gmacs": flops.count(found, s.image_size)["macs"] / 1e9,
    "original_gmacs": flops.count(original, s.image_size)["macs"] / 1e9,
  }
  pub = network.published_latencies()
  pub_name = f"{original.name.rsplit('-', 1)[0]}-{''.join(p[0].upper() for p in s.processors)}"
  if pub_name in pub:
    res["published_stretched_ms"] = pub[pub_name]
    res["published_stretched_predicted_ms"] = costmodel.predict(network.published(pub_name, s.phone), table)
  return found, {**res, "log": log}


# ---------------------------------------------------------------- steps


def step_count(run: Run) -> dict:
  s = run.settings
  net = network.load(s.network)
  r = {"config": net.name, "image_size": s.image_size, **flops.count(net, s.image_size)}
  print(json.dumps(r, indent=2))
  print(
    f"{net.name} @{s.image_size}: {r['macs'] / 1e9:.3f} GMACs, {r['params'] / 1e6:.3f} M params as the model "
    f"runs; {r['pycls_macs'] / 1e9:.3f} GMACs, {r['pycls_params'] / 1e6:.3f} M as pycls reports"
  )
  return r


def step_calibrate(run: Run) -> dict:
  res = calibration(run.settings.phone, lomo=True)
  report_lib.write_json(run.path("calibration.json"), res)
  breport.write_calibration(run.workdir, res)
  print(json.dumps(res["errors"], indent=2))
  print(f"wrote {run.path('report.md')}")
  return res["errors"]


def step_search(run: Run) -> dict:
  found, res = stretch(run.settings)
  out = Path(run.settings.out) if run.settings.out else run.path(f"{found.name}.yaml")
  network.save(found, out)
  for e in res["log"]:
    print(json.dumps(e))
  print(
    f"best single processor {res['best_single_processor']}: {res['best_single_ms']:.2f} ms; searched: "
    f"{res['searched_ms']:.2f} ms ({res['search_speedup']:.2f}x); wrote {out}"
  )
  return {k: v for k, v in res.items() if k != "log"}


def _cached(path: Path, *keys: str) -> dict | None:
  return safeio.load_json(path, what=path.stem, keys=keys) if path.exists() else None


def step_train(run: Run) -> dict:
  done = _cached(run.path("train.json"), "original", "stretched")
  if done is None:
    run.trained()
    done = _cached(run.path("train.json"), "original", "stretched")
  print(json.dumps({role: done[role] for role in ("original", "stretched")}))
  return {f"{role}_accuracy": done[role]["ema_accuracy"] for role in ("original", "stretched")}


def step_export(run: Run) -> dict:
  done = _cached(run.path("export.json"), "original", "stretched")
  if done is not None:
    return _export_summary(done)
  size, out, exports = run.config.data.image_size, {}, run.path("exports")
  trained = run.trained()
  run.stamp("export.json")
  for role, r in trained.items():
    tfl = bexport.export_model(r["model"], r["variables"], size, mean=r["mean"], std=r["std"])
    path = cexport.write_atomic(exports / f"{role}.tflite", tfl)
    segs = bexport.export_segments(r["model"], r["variables"], size, mean=r["mean"], std=r["std"])
    tags = bexport.tags(tfl)
    out[role] = {
      "file": f"exports/{role}.tflite", "bytes": len(tfl), "image_size": size,
      "segments_dir": f"exports/{role}_segments", "segments": bexport.save_segments(segs, exports / f"{role}_segments"),
      "tags": {k: len(v) for k, v in tags.items()}, "mp_end_example": tags["mp_end"][0] if tags["mp_end"] else "",
    }  # fmt: skip
    print(f"wrote {path} ({len(tfl)} bytes) and {sum(len(s.branches) for s in segs)} segment flatbuffers")
  report_lib.write_json(run.path("export.json"), out)
  return _export_summary(out)


def _export_summary(out: dict) -> dict:
  """export.json with the scalars the command line prints (`<role>_bytes`, `<role>_segment_files`)."""
  sizes = {f"{role}_bytes": r["bytes"] for role, r in out.items()}
  files = {f"{role}_segment_files": sum(len(s["files"]) for s in r["segments"]) for role, r in out.items()}
  return {**out, **sizes, **files}


def step_measure(run: Run) -> dict:
  """Fits the `host` processor to LiteRT timings and measures branch-parallel execution -> measure.json."""
  done = _cached(run.path("measure.json"), "parallel")
  if done is not None:
    return done
  rc, ex = run.config.run, step_export(run)
  o, s = run.trained()["original"], run.trained()["stretched"]
  run.stamp("measure.json")
  host, cal_rows = measure.calibrate_host(
    o["model"].config, rc.image_size, n_models=rc.calibration_models, repeats=rc.repeats, threads=rc.threads
  )
  reuse = {}
  if rc.image_size == run.config.data.image_size:  # time the trained nets and their exported flatbuffers
    orig, strt = (o["model"], o["variables"]), (s["model"], s["variables"])
    reuse = {
      "original_tflite": run.path(ex["original"]["file"]).read_bytes(),
      "stretched_tflite": run.path(ex["stretched"]["file"]).read_bytes(),
      "stretched_segments": bexport.load_segments(run.path(ex["stretched"]["segments_dir"]), ex["stretched"]["segments"]),
    }  # fmt: skip
  else:
    orig = measure.random_variables(o["model"].config, rc.image_size)
    strt = measure.random_variables(s["model"].config, rc.image_size)
  par = measure.parallel_speedup(
    orig, strt, rc.image_size, mean=s["mean"], std=s["std"], threads=rc.threads, repeats=rc.repeats,
    host_table=host, **reuse,
  )  # fmt: skip
  out = {"threads": rc.threads, "image_size": rc.image_size, "parallel": par, "calibration_models": cal_rows}
  report_lib.write_json(run.path("measure.json"), out)
  return out


def step_run(run: Run) -> dict:
  """Every step into the workdir, then summary.json and report.md (from what the steps wrote)."""
  train = step_train(run)
  step_export(run)
  found = _cached(run.path("search.json"), "search_speedup", "log")
  if found is None:
    run.stamp("search.json")
    net, found = stretch(run.settings)
    network.save(net, run.path(f"{net.name}.yaml"))
    report_lib.write_json(run.path("search.json"), found)
  cal = _cached(run.path("calibration.json"), "errors", "rows")
  if cal is None or cal.get("phone") != run.settings.phone:
    cal = calibration(run.settings.phone, lomo=run.config.run.lomo)
    report_lib.write_json(run.path("calibration.json"), cal)
  meas = step_measure(run)
  t = meas["threads"]
  out = {**train, "train_seconds": safeio.load_json(run.path("train.json"), what="train")["train_seconds"]}
  out.update({k: v for k, v in found.items() if k not in ("log", "original", "found", "processors")})
  out.update({f"cost_{k}": v for k, v in cal["errors"].items()})
  out["measured_parallel_speedup"] = meas["parallel"][f"measured_speedup_vs_original_{t}threads"]
  out["predicted_parallel_speedup"] = meas["parallel"].get(
    f"predicted_speedup_vs_original_{t}threads", float("nan")
  )
  report_lib.write_json(run.path("summary.json"), out)
  breport.write_report(run.workdir, run.config)
  return out


STEPS = {
  "count": app.Step(step_count, "MACs and params of --network at --image_size (model and pycls)", needs_workdir=False),
  "calibrate": app.Step(step_calibrate, "cost model vs published latencies, leave-one-model-out; report.md"),
  "search": app.Step(step_search, "stretch --network over --processors; writes --out (a YAML)", needs_workdir=False),
  "train": app.Step(step_train, "train (or resume) the original and the stretched net; train.json"),
  "export": app.Step(step_export, "tagged TFLite + per-branch subgraphs of both nets; export.json"),
  "run": app.Step(step_run, "everything above + host timing; summary.json, report.md"),
}  # fmt: skip
