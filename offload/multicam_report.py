"""The report's multi-camera and robustness sections, from multicam.json/.npz and robust.json/.npz.

Computes nothing: the `multicam` and `robust` steps wrote every number shown here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from common import report, safeio

LABELS = {
  "isolated": "isolated (r, b) per camera",
  "hierarchical": "hierarchical (searched r_i, b_i)",
  "smart": "smart switch (one policy, N b)",
  "per_camera": "per-camera MDP, no switch",
}


def sections(rep: report.Report, workdir: Path) -> None:
  """Adds what exists of the multi-camera and robustness results to `rep`."""
  if (workdir / "multicam.json").exists():
    multicam(rep, workdir)
  if (workdir / "robust.json").exists():
    robust(rep, workdir)


def multicam(rep: report.Report, workdir: Path) -> None:
  res = safeio.load_json(workdir / "multicam.json", what="multi-camera results", keys=("loss", "cameras"))
  arr = np.load(workdir / "multicam.npz")
  cams, rates, depths = res["cameras"], res["rates"], res["depths"]
  rep.heading("Many cameras behind one switch")
  rep.text(
    f"{res['policies']} MDP policies (one vmapped value iteration), {res['searched_settings']} settings of "
    f"the hierarchical search simulated on training streams, then every strategy on test streams "
    f"(`runtest_mcam`): {res['seconds']['policies']:.1f} s policies, {res['seconds']['search']:.1f} s "
    f"search, {res['seconds']['test']:.1f} s test. The switch gains r per camera arrival and holds N b."
  )
  for ri, r in enumerate(rates):
    for bi, b in enumerate(depths):
      tag = f"r{r}_b{b}"
      rows = []
      for ci, n in enumerate(cams):
        best = res["best"][ri][bi][ci]
        rows.append([n, *(res["loss"][s][ri][bi][ci] for s in LABELS), f"({best[0]}, {best[1]})"])
      rep.heading(f"Loss per camera image, (r, b) = ({r}, {b}) per camera", level=3)
      rep.table(["N", *LABELS.values(), "searched (r_i, b_i)"], rows)
      series = {LABELS[s]: (cams, res["loss"][s][ri][bi]) for s in LABELS}
      series["weak only"] = (cams, res["weak"])
      series["strong only"] = (cams, res["strong"])
      rep.line_plot(f"multicam_loss_{tag}.png", series, xlabel="cameras N", ylabel="average loss",
                    title=f"loss against cameras, (r, b) = ({r}, {b})")  # fmt: skip
  # the figures below are for the paper's example share (0.1, 1) when swept, else the first share
  ri = rates.index(0.1) if 0.1 in rates else 0
  bi = depths.index(1.0) if 1.0 in depths else 0
  _score_map(rep, arr, res, ri, bi, len(cams) - 1)
  _occupancy(rep, arr, res, ri, bi, len(cams) - 1)
  rep.text("Arrays: `multicam.npz` (per strategy: gain, loss, occupancy, histogram; the search's scores).")


def _score_map(rep: report.Report, arr, res: dict, ri: int, bi: int, ci: int) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  scores = arr["scores"][ri, bi, ci]
  cams, r, b = res["cameras"][ci], res["rates"][ri], res["depths"][bi]
  gr, gd = np.asarray(res["grid_rates"]), np.asarray(res["grid_depths"])
  fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
  im = ax.pcolormesh(gd, gr, scores, shading="nearest", cmap="viridis")
  bst = res["best"][ri][bi][ci]
  ax.plot(bst[1], bst[0], "r*", markersize=12, label="best (r_i, b_i)")
  ax.plot(b, r, "wx", markersize=8, label="the share (r, b)")
  ax.set_xlabel("per-camera depth b_i (tokens)")
  ax.set_ylabel("per-camera rate r_i (tokens per slot)")
  ax.set_title(f"training gain per image, N = {cams}, (r, b) = ({r}, {b})")
  ax.legend(fontsize=8)
  fig.colorbar(im, ax=ax)
  fig.tight_layout()
  report.save_figure(fig, rep.workdir / "multicam_scores.png")
  plt.close(fig)
  rep.heading("The hierarchical search's score map", level=3)
  rep.image("multicam_scores.png", f"training-set gain over (r_i, b_i), best ({bst[0]}, {bst[1]}) starred")
  rep.text("Blank cells: points with less of both rate and depth than the share, which the search skips.")


def _occupancy(rep: report.Report, arr, res: dict, ri: int, bi: int, ci: int) -> None:
  series = {}
  for s in ("isolated", "hierarchical", "smart"):
    h = arr[f"{s}_histogram"][ri, bi, ci]
    h = np.trim_zeros(h, "b")
    series[LABELS[s]] = (np.arange(len(h)), h)
  n, r, b = res["cameras"][ci], res["rates"][ri], res["depths"][bi]
  rep.heading("Switch occupancy", level=3)
  rep.line_plot("multicam_occupancy.png", series, xlabel="switch units n_g at a camera's arrival",
                ylabel="fraction of arrivals", title=f"switch occupancy, N = {n}, (r, b) = ({r}, {b})",
                marker=".")  # fmt: skip
  rows = [[LABELS[s], *res["occupancy"][s][ri][bi], *res["dropped_at_switch"][s][ri][bi]]
          for s in ("isolated", "hierarchical", "smart")]  # fmt: skip
  cams = res["cameras"]
  rep.table(
    ["strategy", *(f"mean n_g/m_g N={c}" for c in cams), *(f"dropped at switch N={c}" for c in cams)], rows
  )


def robust(rep: report.Report, workdir: Path) -> None:
  res = safeio.load_json(workdir / "robust.json", what="robustness results", keys=("drops", "mdp"))
  drops, rates, depths = res["drops"], res["rates"], res["depths"]
  mdp_l, base_l = np.asarray(res["mdp"]), np.asarray(res["baseline"])
  rep.heading("Robustness to a shifted metric distribution")
  rep.text(
    "MDP and baseline fitted on the training metrics with drop % of the images removed by metric rank "
    "(d > 0: the lowest, d < 0: the highest; `runtest_robust`), tested on the true test streams "
    f"(weak {res['weak']:.4f}, strong {res['strong']:.4f}); {res['seconds']:.1f} s."
  )
  order = np.argsort(drops)
  for ri, r in enumerate(rates):
    series = {}
    for bi, b in enumerate(depths):
      series[f"MDP b={b}"] = (np.asarray(drops)[order], mdp_l[order, ri, bi])
      series[f"baseline b={b}"] = (np.asarray(drops)[order], base_l[order, ri, bi])
    rep.line_plot(f"robust_r{r}.png", series, xlabel="training images dropped by metric rank (%)",
                  ylabel="test loss", title=f"robustness, r = {r}")  # fmt: skip
  rows = [[f"{d:+g}", *(f"{m:.4f} / {bl:.4f}" for m, bl in zip(mdp_l[i].ravel(), base_l[i].ravel(), strict=True))]
          for i, d in enumerate(drops)]  # fmt: skip
  rep.table(["drop %", *(f"r={r}, b={b} MDP / baseline" for r in rates for b in depths)], rows)
