"""Quickstart stage `deploy`: the coinfer stage's exports on the serving runtime.

A server process on the coinfer run's model repository, a device process streaming test
frames through the user-space pacer along a Markov bandwidth trace (scaled to the small
images' payloads) with the MPC controller in the loop, and report.md with the measured
figures beside the simulator's. Needs the coinfer stage's workdir (runs/quickstart/coinfer).
"""

from __future__ import annotations

import json
from pathlib import Path

from common.errors import CheckpointError

FRAMES, FPS, TRACE_SCALE = 300, 10.0, 0.05


def run(workdir: Path, *, fast: bool = False) -> dict:
  from launch import deploy

  workdir = Path(workdir)
  coinfer_run = workdir.parent / "coinfer"
  if not (coinfer_run / "exports" / "repository").is_dir():
    raise CheckpointError(
      f"{coinfer_run}/exports/repository is missing; run the coinfer stage first (--only coinfer,deploy)"
    )
  frames, fps = (60, 20.0) if fast else (FRAMES, FPS)
  args = ["coinfer", "--workdir", str(coinfer_run), "--out", str(workdir), "--link", "pacer"]
  args += ["--trace", "markov", "--trace-scale", str(TRACE_SCALE), "--frames", str(frames), f"--fps={fps}"]
  deploy.main(args)
  summary = json.loads((workdir / "summary.json").read_text())
  m, s = summary["measured"], summary["simulator"]
  return {
    "frames": m["frames"],
    "miss_rate": m["deadline_miss_rate"],
    "sim_miss_rate": s["deadline_miss_rate"],
    "accuracy": m["accuracy"],
    "sim_accuracy": s["accuracy"],
    "bytes_per_frame": m["bytes_per_frame"],
    "overhead_p50_ms": m.get("overhead_p50_ms", float("nan")),
    "report": str(workdir / "report.md"),
  }
