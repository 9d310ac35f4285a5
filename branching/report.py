"""report.md of a branching workdir, from the JSON the steps wrote (computes nothing a step owns).

`write_report(workdir, config)`: training (original vs stretched), the search per stage, the cost
model against the published latencies, the export's tags and segments, the measured
branch-parallel timings with the host-calibrated prediction, the headline numbers.
`write_calibration(workdir, result)`: the `calibrate` step's report.
"""

from __future__ import annotations

from pathlib import Path

from common import report, safeio
from common.errors import DataError


def _load(workdir: Path, name: str) -> dict:
  got = safeio.load_json_if_present(workdir / name, what=f"{name} (delete it to recompute)")
  if got is None:
    raise DataError(f"{workdir / name} is missing: run `edgeinfer branching run --workdir={workdir}`")
  return got


def calibration_section(rep: report.Report, cal: dict) -> None:
  rows = [[r["config"], r["published_ms"], r["predicted_ms"], r["rel_err"],
           "" if r["lomo_predicted_ms"] is None else r["lomo_predicted_ms"],
           "" if r["lomo_rel_err"] is None else r["lomo_rel_err"]] for r in cal["rows"]]  # fmt: skip
  rep.heading(f"Cost model vs published latencies ({cal['phone']} phone, int8, 224 px)")
  rep.text(
    "Predicted = calibrated on all 30 published latencies; LOMO = calibrated without the model's whole "
    "family of 5 configs (leave-one-model-out)."
  )
  rep.table(
    ["config", "published ms", "predicted ms", "rel. err", "LOMO predicted ms", "LOMO rel. err"], rows
  )
  rep.text(", ".join(f"{k} = {v:.3f}" for k, v in cal["errors"].items()))


def write_calibration(workdir: str | Path, cal: dict) -> Path:
  """The `calibrate` step's report.md: the comparison and the fitted coefficients."""
  from branching import costmodel

  rep = report.Report("NN-Stretch cost model calibration", workdir)
  calibration_section(rep, cal)
  rep.heading("Coefficients (ms per unit)")
  rep.table(["processor", *costmodel.FEATURES], [[d, *v] for d, v in cal["coef"].items()])
  return rep.write()


def search_section(rep: report.Report, res: dict) -> None:
  rep.heading(f"Search: {res['original']} on {'+'.join(res['processors'])}")
  rep.table(
    ["stage", "candidate tuples", "feasible", "L* ms (best single)", "stage ms", "branches (device, depth, width)"],
    [[e["stage"], e["combinations"], e["feasible"], e["L_star"], e["stage_ms"], [tuple(b) for b in e["branches"]]]
     for e in res["log"]],
  )  # fmt: skip
  rep.text(
    f"Searched config `{res['found']}.yaml` (same YAML schema): predicted {res['searched_ms']:.2f} ms against "
    f"the best single processor ({res['best_single_processor']}, {res['best_single_ms']:.2f} ms): "
    f"{res['search_speedup']:.2f}x, {res['searched_gmacs']:.2f} GMACs (original {res['original_gmacs']:.2f}); "
    f"the search took {res['search_seconds']:.2f} s."
  )


def write_report(workdir: str | Path, config) -> Path:
  """report.md of a `run` workdir."""
  workdir = Path(workdir)
  train, ex, meas = (_load(workdir, n) for n in ("train.json", "export.json", "measure.json"))
  rep = report.Report("NN-Stretch (branching): stretched vs single-branch", workdir)
  rep.heading(f"Training on `{config.data.name}` ({config.train.num_epochs} epochs, SGD + cosine + EMA)")
  rep.table(
    ["model", "EMA test accuracy", "raw test accuracy", "MMACs", "params"],
    [[r["name"], r["ema_accuracy"], r["accuracy"], r["macs"] / 1e6, r["params"]]
     for r in (train["original"], train["stretched"])],
  )  # fmt: skip
  search_section(rep, _load(workdir, "search.json"))
  calibration_section(rep, _load(workdir, "calibration.json"))
  s = ex["stretched"]
  rep.heading("Export")
  rep.text(
    f"`{s['file']}` ({s['bytes']} bytes): tensors tagged cpu {s['tags']['cpu']}, dsp {s['tags']['dsp']}, "
    f"gpu {s['tags']['gpu']}; mp_start {s['tags']['mp_start']}, mp_end {s['tags']['mp_end']} (e.g. "
    f"`{s['mp_end_example']}`). Per-branch subgraphs: "
    + ", ".join(f"{seg['name']} x{len(seg['files'])}" for seg in s["segments"])
    + f" under `{s['segments_dir']}/`; the original is `{ex['original']['file']}`."
  )
  t, size = meas["threads"], meas["image_size"]
  rep.heading(f"Branch-parallel execution on this CPU ({t} threads, LiteRT, {size} px)")
  par = meas["parallel"]
  rep.table(["measurement", "value"], [[k, v] for k, v in par.items() if k not in ("tags", "fork_join")])
  if "fork_join" in par:
    _fork_join(rep, par["fork_join"])
  rep.text(
    "Host calibration models (LiteRT, median ms): " + "; ".join(str(r) for r in meas["calibration_models"])
  )
  rep.text(
    "The machine is shared and the models are small, so thread hand-off overhead weighs heavily; "
    "re-run `python -m launch.bench branching` on a quiet machine for the benchmark figures."
  )
  rep.heading("Headline numbers")
  rep.json(_load(workdir, "summary.json"))
  return rep.write()


def _fork_join(rep: report.Report, fj: dict) -> None:
  rep.text(
    "Fork/join per branched stage, measured at this size on the pinned runner (ms, medians): each branch's "
    "interpreter on the calling thread, each alone on its core (a worker's includes the hand-off), both in "
    "parallel (the stage repeated alone, and inside whole runs), overhead = in a run - slowest branch on the "
    "calling thread, an empty hand-off. The "
    f"prediction's host fork/join term is the fit s + e * (stage input + output elements): s = "
    f"{fj['per_stage_s_ms']:.4g} ms, e = {fj['per_element_e_ms']:.3g} ms per element."
  )
  rows = [
    [r["segment"], r["in_elems"], r["out_elems"], " / ".join(f"{a:.4g}" for a in r.get("branch_compute_ms", [])),
     " / ".join(f"{a:.4g}" for a in r["branch_alone_ms"]), r["parallel_ms"], r.get("in_run_ms"), r["fork_join_ms"],
     r["empty_handoff_ms"]]
    for r in fj["stages"] if r["branches"] > 1
  ]  # fmt: skip
  rep.table(
    [
      "segment",
      "input elems",
      "output elems",
      "branches, caller",
      "branches alone",
      "parallel alone",
      "in a run",
      "overhead",
      "empty hand-off",
    ],
    rows,
  )
