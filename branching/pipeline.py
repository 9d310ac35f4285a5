"""End-to-end runs behind the CLI and the quickstart stage, each writing into its workdir.

`calibration_section`: the cost model against the 30 published latencies
(in-sample and leave-one-model-out). `search_section`: the search on a
published original against the best single processor. `run`: training
(original vs stretched), search, export with tags, per-branch subgraphs, the
`host` calibration and the measured branch-parallel speedup, all in one
report.md.
"""

from __future__ import annotations

import time
from pathlib import Path

import ml_collections
import numpy as np

from branching import config as bcfg
from branching import costmodel, flops, measure, search
from branching import export as bexport
from branching import train as btrain
from common import cli, report
from common import export as cexport


def calibration_section(rep: report.Report, phone: str = "mi", lomo: bool = True) -> dict:
  table = costmodel.default_table(phone)
  data = costmodel.published_dataset(phone)
  rows_lomo = {r["config"]: r for r in costmodel.leave_one_model_out(phone)} if lomo else {}
  rows, errs, errs_in = [], [], []
  for name, c, ms in data:
    pred = costmodel.predict(c, table)
    errs_in.append(abs(pred / ms - 1))
    lo = rows_lomo.get(name)
    if lo:
      errs.append(abs(lo["rel_err"]))
    rows.append(
      [name, ms, pred, pred / ms - 1, lo["predicted_ms"] if lo else "", lo["rel_err"] if lo else ""]
    )
  rep.heading("Cost model vs published latencies (mi phone, int8, 224 px)")
  rep.text(
    "Predicted = calibrated on all 30 published latencies; LOMO = calibrated without the model's whole "
    "family of 5 configs (leave-one-model-out)."
  )
  rep.table(
    ["config", "published ms", "predicted ms", "rel. err", "LOMO predicted ms", "LOMO rel. err"], rows
  )
  out = {"in_sample_median_abs_err": float(np.median(errs_in))}
  if errs:
    out["lomo_median_abs_err"] = float(np.median(errs))
    out["lomo_mean_abs_err"] = float(np.mean(errs))
  rep.text(", ".join(f"{k} = {v:.3f}" for k, v in out.items()))
  return out


def search_section(rep: report.Report, sc: ml_collections.ConfigDict, workdir: Path) -> dict:
  original = bcfg.load(sc.model)
  table = costmodel.default_table(sc.phone)
  t0 = time.perf_counter()
  log: list = []
  found = search.stretch(
    original,
    tuple(sc.processors),
    table=table,
    alpha=sc.alpha,
    beta=sc.beta,
    gamma=sc.gamma,
    image_size=sc.image_size,
    log=log,
  )
  secs = time.perf_counter() - t0
  bcfg.save(found, workdir / f"{found.name}.yaml")
  dev, single_ms = search.best_single(original, tuple(sc.processors), table, image_size=sc.image_size)
  pred = costmodel.predict(found, table, image_size=sc.image_size)
  rep.heading(f"Search: {original.name} on {'+'.join(sc.processors)}")
  rep.table(
    [
      "stage",
      "candidate tuples",
      "feasible",
      "L* ms (best single)",
      "stage ms",
      "branches (device, depth, width)",
    ],
    [[e["stage"], e["combinations"], e["feasible"], e["L_star"], e["stage_ms"], e["branches"]] for e in log],
  )
  res = {
    "search_seconds": secs,
    "best_single_processor": dev,
    "best_single_ms": single_ms,
    "searched_ms": pred,
    "search_speedup": single_ms / pred,
    "searched_gmacs": flops.count(found, sc.image_size)["macs"] / 1e9,
    "original_gmacs": flops.count(original, sc.image_size)["macs"] / 1e9,
  }
  pub = bcfg.published_latencies()
  pub_name = f"{original.name.rsplit('-', 1)[0]}-{''.join(p[0].upper() for p in sc.processors)}"
  if pub_name in pub:
    res["published_stretched_ms"] = pub[pub_name]
    res["published_stretched_predicted_ms"] = costmodel.predict(bcfg.published(pub_name, sc.phone), table)
  rep.text(
    f"Searched config `{found.name}.yaml` (same YAML schema): predicted {pred:.2f} ms against the best single "
    f"processor ({dev}, {single_ms:.2f} ms): {res['search_speedup']:.2f}x, {res['searched_gmacs']:.2f} GMACs "
    f"(original {res['original_gmacs']:.2f}); the search took {secs:.2f} s."
  )
  return res


def run(
  config: ml_collections.ConfigDict, workdir: str | Path, *, fast: bool = False, lomo: bool = True
) -> dict:
  """Trains, searches, calibrates, exports and measures; writes report.md; returns headline numbers."""
  workdir = Path(workdir)
  btrain.validate(config)  # before anything is written: a rejected config leaves the workdir as it was
  cli.save_config(config, workdir)
  rep = report.Report("NN-Stretch (branching): stretched vs single-branch", workdir)
  t0 = time.time()
  res = btrain.train_and_evaluate(config, workdir, show_progress=not fast)
  o, s = res["original"], res["stretched"]
  rep.heading(f"Training on `{config.data.name}` ({config.train.num_epochs} epochs, SGD + cosine + EMA)")
  rep.table(
    ["model", "EMA test accuracy", "raw test accuracy", "MMACs", "params"],
    [[r["name"], r["ema_accuracy"], r["accuracy"], r["macs"] / 1e6, r["params"]] for r in (o, s)],
  )
  out = {
    "original_accuracy": o["ema_accuracy"],
    "stretched_accuracy": s["ema_accuracy"],
    "train_seconds": time.time() - t0,
  }
  out.update(search_section(rep, config.search, workdir))
  out.update({f"cost_{k}": v for k, v in calibration_section(rep, config.search.phone, lomo=lomo).items()})
  # Export the trained stretched model with tags, and its per-branch subgraphs.
  size = config.data.image_size
  tfl = bexport.export_model(s["model"], s["variables"], size, mean=s["mean"], std=s["std"])
  cexport.write_atomic(workdir / "exports" / "stretched.tflite", tfl)
  segs = bexport.export_segments(s["model"], s["variables"], size, mean=s["mean"], std=s["std"])
  for seg in segs:
    for j, b in enumerate(seg.branches):
      cexport.write_atomic(workdir / "exports" / "segments" / f"{seg.name}_branch{j}.tflite", b)
  tags = bexport.tags(tfl)
  rep.heading("Export")
  rep.text(
    f"`exports/stretched.tflite` ({len(tfl)} bytes): tensors tagged cpu {len(tags['cpu'])}, dsp {len(tags['dsp'])}, "
    f"gpu {len(tags['gpu'])}; mp_start {len(tags['mp_start'])}, mp_end {len(tags['mp_end'])} (e.g. "
    f"`{tags['mp_end'][0] if tags['mp_end'] else ''}`). Per-branch subgraphs: "
    + ", ".join(f"{seg.name} x{len(seg.branches)}" for seg in segs)
    + " under `exports/segments/`."
  )
  # Measured parallel execution, with the host-calibrated cost model beside it.
  rc = config.run
  n_cal = 2 if fast else rc.calibration_models
  reps = 10 if fast else rc.repeats
  host, cal_rows = measure.calibrate_host(
    o["model"].config, rc.image_size, n_models=n_cal, repeats=reps, threads=rc.threads
  )
  reuse = {}
  if rc.image_size == size:
    orig, strt = (o["model"], o["variables"]), (s["model"], s["variables"])
    reuse = {"stretched_tflite": tfl, "stretched_segments": segs}
  else:
    orig = measure.random_variables(o["model"].config, rc.image_size)
    strt = measure.random_variables(s["model"].config, rc.image_size)
  par = measure.parallel_speedup(
    orig,
    strt,
    rc.image_size,
    mean=s["mean"],
    std=s["std"],
    threads=rc.threads,
    repeats=reps,
    host_table=host,
    **reuse,
  )
  rep.heading(f"Branch-parallel execution on this CPU ({rc.threads} threads, LiteRT, {rc.image_size} px)")
  rep.table(["measurement", "value"], [[k, v] for k, v in par.items() if k != "tags"])
  rep.text("Host calibration models (LiteRT, median ms): " + "; ".join(str(r) for r in cal_rows))
  rep.text(
    "The machine is shared and the models are small, so thread hand-off overhead weighs heavily; "
    "re-run `python -m launch.bench branching` on a quiet machine for the benchmark figures."
  )
  out.update(
    measured_parallel_speedup=par["measured_speedup_vs_original_2threads"],
    predicted_parallel_speedup=par.get("predicted_speedup_vs_original_2threads", float("nan")),
  )
  rep.heading("Headline numbers")
  rep.json(out)
  rep.write()
  report.write_json(workdir / "summary.json", out)
  return out
