"""Pieces of the deploy reports every technique writes: on-time latencies, their CDF, figures."""

from __future__ import annotations

import numpy as np


def on_time(latencies, deadline_s: float) -> np.ndarray:
  """Latencies with every frame past the deadline (late, or never answered) set to +inf."""
  x = np.asarray(latencies, float)
  return np.where(np.isfinite(x) & (x <= deadline_s), x, np.inf)


def cdf(ax, xs, label):
  """CDF over all frames: frames at +inf are missing from the curve, so it tops out at 1 - miss rate."""
  xs = np.asarray(xs, float)
  fin = np.sort(xs[np.isfinite(xs)]) * 1e3
  if fin.size:
    ax.step(fin, np.arange(1, fin.size + 1) / xs.size, where="post", label=label)


def save(rep, fig, axes, filename: str, caption: str) -> None:
  import matplotlib.pyplot as plt

  from common.report import save_figure

  for a in axes:
    a.grid(alpha=0.3)
    if a.get_legend_handles_labels()[0]:
      a.legend(fontsize=8)
  fig.tight_layout()
  save_figure(fig, rep.workdir / filename)
  plt.close(fig)
  rep.image(filename, caption)


def frames_text(m: dict) -> str:
  """How the frames of a stream ended (a summary of `common.serving.device.summary`)."""
  st = m["status"]
  return (
    f"Frames: {st['ok']} answered in time, {st['late']} late, {st['lost']} lost, {st.get('refused', 0)} "
    f"refused by the server's admission control (reconnects "
    f"{m.get('reconnects', 0)}). A frame the server never answers has no latency and counts as a miss."
  )


def overhead_text(m: dict) -> str:
  return (
    "Runtime overhead per answered frame (end-to-end minus controller, device TFLite, link and server "
    f"compute time): p50 {m['overhead_p50_ms']:.3f} ms, p99 {m['overhead_p99_ms']:.3f} ms."
  )


def server_text(stats: dict) -> str:
  nan = float("nan")
  return (
    f"Server: {stats.get('requests', 0)} requests, {stats.get('failed', 0)} failed; server-side latency "
    f"p50 {stats.get('p50_ms', nan):.3f} ms, p99 {stats.get('p99_ms', nan):.3f} ms."
  )
