"""The run's report.md and plots, from what the steps wrote into the workdir.

`loss_rows`, `ablation_rows`, `rate_series` and `controller_means` read the results and derive
the report's figures (accuracy losses with their paired-bootstrap intervals, the accuracy-vs-rate
series, the controller means); `write_report` renders them. Nothing here trains or simulates: a
missing result leaves its section out.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from coinfer import compress
from coinfer import train as T
from common import micro, safeio, stats
from common.errors import CheckpointError
from common.report import Report

# Accuracy loss (SW-CNN minus individual top-1 error) published by the original: max, min, mean
# over its 40 setups (MobileNetV2, StanfordCars). noI-D-noC is only in its figure (mean about 0.63).
PUBLISHED_LOSS = {
  "noI-D-C": (0.552, 0.406, 0.4382),
  "noI-noD-noC": (0.503, 0.348, 0.3716),
  "I-noD-C": (0.181, 0.013, 0.0347),
  "noI-noD-C": (0.14, 0.01, 0.0329),
  "I-noD-noC": (0.153, 0.007, 0.0265),
  "I-D-noC": (0.095, 0.0, 0.0118),
  "I-D-C": (0.013, 0.0, 0.0027),
}
SIM_COLUMNS = {
  "accuracy": "accuracy",
  "expected_accuracy": "expected acc",
  "timely_accuracy": "timely acc",
  "deadline_miss_rate": "miss rate",
  "mean_latency_s": "mean lat s",
  "p95_latency_s": "p95 lat s",
  "fallbacks": "fallbacks",
}


def _read(workdir: Path, name: str) -> dict | None:
  return safeio.load_json_if_present(Path(workdir) / f"{name}.json", what=f"{name} result")


def _interval(ci: dict) -> str:
  return f"[{ci['lo']:+.4f}, {ci['hi']:+.4f}]"


def accuracy_loss(sw: dict, ind: dict) -> dict:
  """SW-CNN minus individual top-1 error over the setups both have: max / min / mean (and per setup)."""
  sw_acc = {r["name"]: r["accuracy"] for r in sw["setups"]}
  per = {r["name"]: r["accuracy"] - sw_acc[r["name"]] for r in ind["setups"] if r["name"] in sw_acc}
  if not per:
    raise CheckpointError("the SW-CNN and the individual models share no setup")
  v = np.asarray(list(per.values()))
  return {"max": float(v.max()), "min": float(v.min()), "mean": float(v.mean()), "per_setup": per}


def loss_interval(workdir: Path, ablation: str, ind: dict, *, seed: int = 0) -> dict | None:
  """Mean accuracy loss of an ablation against the individual models with a 95% paired
  bootstrap interval over test images; None when the per-image results are not in `workdir`."""
  sw_path, ind_path = (
    Path(workdir) / f"distill_{ablation}_correct.npy",
    Path(workdir) / "individual_correct.npy",
  )
  if not (sw_path.exists() and ind_path.exists()):
    return None
  sw = safeio.load_array(sw_path, what="per-image results", shape=(None, None))
  own = safeio.load_array(ind_path, what="per-image results", shape=(None, None))
  ids = [r["id"] for r in ind["setups"]]
  if own.shape[0] != len(ids) or sw.shape[-1] != own.shape[-1]:
    return None  # from another run or config
  return stats.paired_bootstrap(own, sw[ids], seed=seed)


def loss_rows(workdir: Path, ind: dict) -> list[list]:
  """One row per ablation with results: method, max, min, mean, mean 95% CI, the published three."""
  rows = []
  for ab in T.ABLATIONS:
    sw = _read(workdir, f"distill_{ab}")
    if sw:
      loss = accuracy_loss(sw, ind)
      ci = loss_interval(workdir, ab, ind)
      rows.append([ab, loss["max"], loss["min"], loss["mean"], _interval(ci) if ci else "-"])
      rows[-1] += PUBLISHED_LOSS.get(ab, ("-", "-", "-"))
  return sorted(rows, key=lambda r: r[3])


def ablation_rows(workdir: Path, n_setups: int) -> list[list]:
  """Each other ablation's mean SW-CNN accuracy minus I-D-C's, with a paired bootstrap interval."""
  ref_path = workdir / "distill_I-D-C_correct.npy"
  others = [ab for ab in T.ABLATIONS if ab != "I-D-C" and (workdir / f"distill_{ab}_correct.npy").exists()]
  if not (ref_path.exists() and others):
    return []
  ref = safeio.load_array(ref_path, what="per-image results", shape=(n_setups, None))
  rows = []
  for ab in others:
    cur = safeio.load_array(workdir / f"distill_{ab}_correct.npy", what="per-image results")
    if cur.shape == ref.shape:
      ci = stats.paired_bootstrap(cur, ref)
      rows.append([ab, ci["mean"], _interval(ci)])
  return rows


def rate_series(ctx: T.Context, sw: dict, clio: dict | None, spinn: dict | None) -> dict:
  """Accuracy against residual rate: the SW-CNN's Pareto setups, CLIO's Pareto points, SPINN."""
  shape = ctx.test_ds.image_shape
  acc = {r["name"]: r["accuracy"] for r in sw["setups"]}
  rate = [compress.residual_rate(s.channels, s.bits, shape) for s in ctx.setups]
  front = compress.pareto_front(rate, [acc[s.name] for s in ctx.setups])
  series = {"SW-CNN (Pareto)": ([rate[i] for i in front], [acc[ctx.setups[i].name] for i in front])}
  if clio:
    pts = clio["points"]
    keep = compress.pareto_front([p["residual_rate"] for p in pts], [p["accuracy"] for p in pts])
    series["CLIO (Pareto)"] = ([pts[i]["residual_rate"] for i in keep], [pts[i]["accuracy"] for i in keep])
  if spinn:
    pts = sorted(spinn["points"], key=lambda p: p["residual_rate"])
    series["SPINN"] = ([max(p["residual_rate"], 1e-3) for p in pts], [p["accuracy"] for p in pts])
  return series


def controller_means(sim: dict, key: str) -> dict[str, float]:
  """Each controller's `key` averaged over the traces."""
  names = list(next(iter(sim["traces"].values()))["controllers"])
  return {n: float(np.mean([t["controllers"][n][key] for t in sim["traces"].values()])) for n in names}


def write_report(ctx: T.Context, workdir: Path) -> Path:
  """report.md: accuracy-loss table, accuracy vs residual rate (CLIO, SPINN), controller results."""
  workdir = Path(workdir)
  rep = Report("RTCoInfer (coinfer)", workdir)
  cfg = ctx.config
  rep.text(f"Data `{cfg.data.name}` at {ctx.test_ds.image_shape}, {len(ctx.setups)} setups, seed {cfg.seed}.")
  init, ind, sw = _read(workdir, "init"), _read(workdir, "individual"), _read(workdir, "distill_I-D-C")
  if init:
    rep.text(f"Initialization model ({init['teacher']}): test accuracy {init['accuracy']:.4f}.")
  _loss_section(rep, ctx, workdir, ind)
  if sw:
    _rate_section(rep, ctx, sw, ind, _read(workdir, "clio"), _read(workdir, "spinn"))
  sim = _read(workdir, "simulate")
  if sim:
    _controller_section(rep, sim)
  exp = _read(workdir, "export")
  if exp:
    _export_section(rep, exp)
  return rep.write()


def _loss_section(rep: Report, ctx: T.Context, workdir: Path, ind: dict | None) -> None:
  rep.heading("Accuracy loss: SW-CNN minus individually trained (top-1 error difference)")
  if ind and not ind.get("all_setups"):
    rep.text(
      f"Individual models trained for a representative subset of {len(ind['setups'])} setups only "
      "(`individual.subset`); the statistics run over that subset."
    )
  rows = loss_rows(workdir, ind) if ind else []
  if rows:
    rep.table(
      ["method", "max", "min", "mean", "mean 95% CI", "published max", "published min", "published mean"],
      rows,
    )
    n_test = len(ctx.test_ds)
    rep.text(
      "Published: the original's README table (MobileNetV2 on StanfordCars at 224x224, 40 setups, "
      "250 + 500 epochs); rows sorted by the measured mean. The interval is a paired bootstrap "
      f"over the {n_test} test images (2000 resamples). On {n_test} images one image is "
      f"{1 / n_test:.4f} of accuracy, so a per-setup difference, and the max over setups above all, "
      "carries test-set noise of about two images."
    )
  rows = ablation_rows(workdir, len(ctx.setups))
  if rows:
    rep.heading("Ablations against I-D-C (mean SW-CNN accuracy over setups, paired bootstrap)")
    rep.table(["method", "accuracy minus I-D-C", "95% CI"], rows)


def _rate_section(rep: Report, ctx: T.Context, sw: dict, ind, clio, spinn) -> None:
  shape = ctx.test_ds.image_shape
  acc = {r["name"]: r["accuracy"] for r in sw["setups"]}
  ind_acc = {r["name"]: r["accuracy"] for r in ind["setups"]} if ind else {}
  rep.heading("Accuracy per setup (SW-CNN I-D-C)")
  rep.table(
    ["setup", "residual rate", "SW-CNN acc", "individual acc"],
    [
      [s.name, compress.residual_rate(s.channels, s.bits, shape), acc[s.name], ind_acc.get(s.name, "-")]
      for s in ctx.setups
    ],
  )
  rep.heading("Accuracy vs residual rate")
  rep.line_plot(
    "accuracy_vs_rate.png",
    rate_series(ctx, sw, clio, spinn),
    xlabel="residual rate",
    ylabel="top-1 accuracy",
    logx=True,
  )


def _controller_section(rep: Report, sim: dict) -> None:
  rep.heading("Controllers per trace (frames at the configured fps and deadline)")
  rows = [
    [tname, f"{t['mean_mbps']:.2f}", cname, *(m[k] for k in SIM_COLUMNS)]
    for tname, t in sim["traces"].items()
    for cname, m in t["controllers"].items()
  ]
  rep.table(["trace", "mean Mbit/s", "controller", *SIM_COLUMNS.values()], rows)
  rep.bar_plot(
    "miss_rate.png",
    controller_means(sim, "deadline_miss_rate"),
    ylabel="deadline-miss rate (mean over traces)",
  )
  rep.bar_plot(
    "timely_accuracy.png",
    controller_means(sim, "timely_accuracy"),
    ylabel="timely accuracy (mean over traces)",
  )


def _export_section(rep: Report, exp: dict) -> None:
  rep.heading("Export parity (device TFLite float -> server ONNX vs JAX)")
  rep.table(
    ["setup", "top-1 agreement (float)", "top-1 agreement (int8 device)", "device int8 bytes"],
    [
      [
        r["setup"],
        r["top1_agreement"],
        r.get("int8_top1_agreement", "-"),
        r.get("device_int8_bytes", r.get("int8_error", "-")),
      ]
      for r in exp["setups"]
    ],
  )
  rep.text(
    "The int8 device parts under TensorFlow Lite Micro's own interpreter, against LiteRT on the "
    "parity images; the arena is the smallest that allocates (bisection), the target RAM "
    "`config.export.target_ram_bytes`."
  )
  rep.table(["setup", *micro.MICRO_COLUMNS], [[r["setup"], *_micro_cells(r)] for r in exp["setups"]])


def _micro_cells(r: dict) -> list:
  if "int8_error" in r:
    return ["-", "-", "-", "-", f"not exported: {r['int8_error']}"]
  return micro.micro_cells(r, "device_int8_micro_")
