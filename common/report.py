"""Markdown reports with PNG plots, written into the run's workdir.

rep = Report("AgileNN on digits")
rep.text("Trained for 10 epochs.")
rep.table(["setup", "accuracy"], [["c=1,b=2", 0.91]])
rep.line_plot("acc.png", {"SW-CNN": (x, y)}, xlabel="rate", ylabel="accuracy")
rep.write(workdir)            # workdir/report.md (+ the PNGs already there)
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from common.export import write_atomic


def _fmt(v: Any) -> str:
  if isinstance(v, float | np.floating):
    v = float(v)
    if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-3):
      return f"{v:.3e}"
    return f"{v:.4g}"
  return str(v)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
  """A GitHub-flavoured markdown table."""
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
  return "\n".join(lines)


class Report:
  """Accumulates markdown sections; plots are written as PNGs beside the report."""

  def __init__(self, title: str, workdir: str | os.PathLike):
    self.workdir = Path(workdir)
    self.workdir.mkdir(parents=True, exist_ok=True)  # files: on the primary process only
    self.parts: list[str] = [f"# {title}\n"]

  def heading(self, text: str, level: int = 2) -> None:
    self.parts.append(f"{'#' * level} {text}\n")

  def text(self, text: str) -> None:
    self.parts.append(text.rstrip() + "\n")

  def table(self, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    self.parts.append(markdown_table(header, rows) + "\n")

  def json(self, obj: Any) -> None:
    self.parts.append("```json\n" + json.dumps(obj, indent=2, default=str) + "\n```\n")

  def image(self, filename: str, caption: str = "") -> None:
    self.parts.append(f"![{caption or filename}]({filename})\n")

  def line_plot(
    self,
    filename: str,
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    *,
    xlabel: str,
    ylabel: str,
    title: str = "",
    logx: bool = False,
    marker: str = "o",
  ) -> Path:
    """Plots named (x, y) series into workdir/filename and links it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    for name, (x, y) in series.items():
      ax.plot(np.asarray(x), np.asarray(y), marker=marker, markersize=3, label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if logx:
      ax.set_xscale("log")
    if title:
      ax.set_title(title)
    ax.grid(alpha=0.3)
    if len(series) > 1:
      ax.legend(fontsize=8)
    fig.tight_layout()
    path = save_figure(fig, self.workdir / filename)
    plt.close(fig)
    self.image(filename, title or ylabel)
    return path

  def bar_plot(self, filename: str, values: Mapping[str, float], *, ylabel: str, title: str = "") -> Path:
    """A bar chart of named values into workdir/filename."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    ax.bar(list(values), [float(v) for v in values.values()])
    ax.set_ylabel(ylabel)
    if title:
      ax.set_title(title)
    ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    path = save_figure(fig, self.workdir / filename)
    plt.close(fig)
    self.image(filename, title or ylabel)
    return path

  def render(self) -> str:
    return "\n".join(self.parts)

  def write(self, filename: str = "report.md") -> Path:
    return write_atomic(self.workdir / filename, self.render().encode())


def save_figure(fig, path: str | os.PathLike) -> Path:
  """Saves a matplotlib figure as PNG atomically (rendered in memory, then `write_atomic`)."""
  buf = io.BytesIO()
  fig.savefig(buf, format="png")
  return write_atomic(path, buf.getvalue())


def save_npy(path: str | os.PathLike, array: np.ndarray) -> Path:
  """Saves one array in .npy format atomically."""
  buf = io.BytesIO()
  np.save(buf, np.asarray(array), allow_pickle=False)
  return write_atomic(path, buf.getvalue())


def write_json(path: str | os.PathLike, obj: Any) -> Path:
  """Writes JSON atomically (numpy scalars and arrays become Python values)."""

  def default(o):
    if isinstance(o, np.ndarray | np.generic):
      return o.tolist()
    return str(o)

  return write_atomic(path, json.dumps(obj, indent=2, default=default).encode())
