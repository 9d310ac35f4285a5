"""Quickstart stage `subnets`: REDS on digits end to end with the `quick` config.

Dense DS-CNN -> |W*G| importance -> nested knapsack (CVXPY + HiGHS) at 25/50/75 % MACs ->
permutation into channel prefixes -> joint fine-tuning + BN stage -> baselines ->
TFLite float/int8 + TFLite Micro arrays with LiteRT latency -> report.md.
"""

from __future__ import annotations

from pathlib import Path

from common import app, report


def run(workdir: Path, *, fast: bool = False) -> dict:
  """Runs every step of the quick config's `quickstart` variant (`fast`: its smoke run) into `workdir`;
  returns headline numbers. The stage keeps the quickstart's 90 s budget: REDS against uniform width
  scaling only; `edgeinfer subnets export --config=subnets/configs/quick.py --workdir=DIR` runs every
  baseline."""
  from subnets import pipeline

  config = app.load_config_file("subnets/configs/quick.py:" + ("fast" if fast else "quickstart"))
  workdir = Path(workdir)
  exp = pipeline.run_step("export", config, workdir, show_progress=not fast)
  ft = pipeline.step_finetune(pipeline.Run(config, workdir, show_progress=False))
  reds = ft["methods"]["reds"]
  rows = exp["rows"]
  out = {
    "dense_accuracy": ft["dense_accuracy"],
    **{f"reds_acc_{r['subnet']}": a for r, a in zip(rows, reds["accuracy"], strict=True)},
    "latency_ratio_25pct": rows[0]["float_latency_us"] / rows[-1]["float_latency_us"],
  }
  if "uniform" in ft["methods"]:
    out["uniform_acc_25pct"] = ft["methods"]["uniform"]["accuracy"][0]
  report.write_json(workdir / "summary.json", out)
  return out
