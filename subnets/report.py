"""report.md of a subnets run: knapsack solutions, accuracy versus MACs for REDS and
every baseline (plot and table), the per-subnetwork export table, published numbers."""

from __future__ import annotations

from common import micro, safeio
from common import report as report_lib

# Digest section 4.3 (DS-CNN S, appendix Tables 7-8, BU): 100/75/50/25 % MACs.
PUBLISHED = {
  "fashion_mnist": [91.6, 91.51, 90.75, 89.22],
  "cifar10": [81.07, 80.17, 76.72, 68.66],
  "speech_commands": [94.1, 93.2, 92.1, 89.6],  # DS-CNN S, read off the TOMC plot (+-0.3 pp)
}
NAMES = {"reds": "REDS (|W*G| + knapsack)", "uniform": "uniform width (slimmable-style)",
         "magnitude": "magnitude + knapsack", "random": "random + knapsack", "scratch": "each width from scratch"}  # fmt: skip


def _accuracy_section(rep, c, ks: dict, ft: dict) -> None:
  """Accuracy against MACs of every ordering (plot and table), beside the published figures."""
  rep.heading("Accuracy versus MACs")
  series, rows = {}, []
  for method, r in ft["methods"].items():
    macs = r["macs"]
    series[NAMES.get(method, method)] = (macs, r["accuracy"])
    for i, (w, mc, a) in enumerate(zip(r["widths"], macs, r["accuracy"], strict=True)):
      label = f"{ks['budgets'][i]:.0%}" if i < len(ks["budgets"]) else "dense"
      shared = r.get("accuracy_stored_bn", [""] * 9)[i]
      rows.append([method, label, str(w), f"{mc:.0f}", a, shared, r.get("accuracy_before", [None] * 9)[i]])
  rep.line_plot(
    "accuracy_vs_macs.png", series, xlabel="MACs", ylabel="test accuracy", title="accuracy vs MACs"
  )
  rep.table(["method", "budget", "widths", "MACs", "test accuracy", "with the shared dense BN statistics",
             "before fine-tuning"], rows)  # fmt: skip
  rep.text(f"BN statistics: `finetune.bn_stats = {c.finetune.bn_stats!r}` "
           f"(loss weights `{c.finetune.loss_weights}`).")  # fmt: skip
  rep.text(f"Dense model before REDS: test accuracy {ft['dense_accuracy']:.4f}.")
  pub = PUBLISHED.get(c.data.name)
  if pub:
    ours = list(reversed(ft["methods"]["reds"]["accuracy"]))
    rep.text("Published REDS DS-CNN-S accuracies (100/75/50/25 %): "
             f"{pub}; this run (100/...): {[round(100 * a, 2) for a in ours]}.")  # fmt: skip


def _export_section(rep, exp: dict) -> None:
  """The exported subnetworks' sizes, latencies and accuracies, TFLM's check and switching."""
  rep.heading("Exported subnetworks (LiteRT on this CPU, 1 thread, batch 1)")
  cols = ["subnet", "widths", "params", "macs", "peak_act_bytes", "float_bytes", "float_latency_us",
          "float_accuracy", "float_max_abs_err", "int8_bytes", "int8_latency_us", "int8_accuracy"]  # fmt: skip
  rep.table(cols, [[r.get(k, "") if k != "widths" else str(r[k]) for k in cols] for r in exp["rows"]])
  rep.text(
    "Files: `exports/*_float.tflite`, `exports/*_int8.tflite`, TFLite Micro arrays `exports/micro/*.{h,cc}`."
  )
  if any("micro_ram_bytes" in r for r in exp["rows"]):
    rep.heading("Int8 subnetworks under TensorFlow Lite Micro", level=3)
    rep.text(
      "TFLite Micro's own interpreter (reference kernels) against LiteRT on the same test images; "
      "the arena is the smallest that allocates (bisection), the RAM `config.export.target_ram_bytes`."
    )
    rep.table(["subnet", *micro.MICRO_COLUMNS], [[r["subnet"], *micro.micro_cells(r)] for r in exp["rows"]])
  sw = exp.get("tflm_switching")
  if sw:
    rep.text(
      f"Switching between the {sw['subnetworks']} int8 subnetworks in one TFLite Micro process "
      f"(host CPU, median of {sw['repeats']}): all resident ({sw['resident_ram_bytes']} B of arenas), "
      f"switch + first inference {sw['resident_switch_plus_first_inference_us']:.1f} us vs a steady "
      f"inference {sw['resident_steady_inference_us']:.1f} us (overhead "
      f"{sw['resident_switch_overhead_us']:.1f} us); one shared {sw['shared_arena_bytes']} B arena, "
      f"rebuilding the target's interpreter in it: {sw['shared_arena_switch_us']:.1f} us."
    )


def write_report(run) -> None:
  c = run.config
  rep = report_lib.Report(f"REDS nested subnetworks: {run.mcfg.kind} on {c.data.name}", run.workdir)
  rep.text(
    f"Model `{c.model.preset}` widths {list(run.mcfg.widths)}, input {list(run.shape)}, "
    f"{len(run.train_ds)} training / {len(run.test_ds)} test examples. Dense MACs "
    f"{run.costs.macs(run.mcfg.widths):.0f}. Budgets {list(c.knapsack.budgets)} of the width-dependent MACs."
  )
  ks, ft, exp = (
    safeio.load_json_if_present(run.path(n)) for n in ("knapsack.json", "finetune.json", "export.json")
  )
  if ks:
    rep.heading("Knapsack (CVXPY + HiGHS, nested bottom-up)")
    m = ks["methods"]["reds"]
    rows = [[f"{b:.0%}", str(w), f"{macs:.0f}", f"{macs / ks['dense_macs']:.3f}", f"{t:.2f}", g, st]
            for b, w, macs, t, g, st in zip(ks["budgets"], m["widths"], m["macs"], m["solve_s"], m["gap"], m["status"], strict=False)]  # fmt: skip
    rep.table(["budget", "widths", "MACs", "MAC fraction (total)", "solve s", "gap", "status"], rows)
    rep.text("Subnetworks are nested by construction (each budget fixes the previous widths) and checked.")
  if ft:
    _accuracy_section(rep, c, ks, ft)
  if exp:
    _export_section(rep, exp)
  rep.write()
