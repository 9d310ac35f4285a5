"""Command line of RTCoInfer.

  python -m coinfer.main init|cluster|distill|individual|baselines|simulate|export|report|all \
      --config coinfer/configs/quick.py --workdir runs/coinfer_quick [--ablation noI-D-C] \
      [--set init.epochs=40 --set model.width_mult=0.5 ...]

Every step reads what the previous ones wrote into the workdir and resumes from checkpoints.
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

from common import config as C
from common.cli import run_main, save_config
from common.errors import ConfigError

STEPS = ("init", "cluster", "distill", "individual", "baselines", "simulate", "export", "report", "all")


def load_config(path: str, overrides: list[str] | tuple = ()):
  """The config of file `path`, with `KEY=VALUE` overrides (VALUE a Python literal or a string)."""
  p = Path(path)
  if not p.exists():
    raise ConfigError(f"config file {path} does not exist")
  spec = importlib.util.spec_from_file_location("coinfer_config", p)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  config = mod.get_config()
  C.apply_overrides(config, overrides)
  validate(config)
  config.lock()
  return config


def validate(config) -> None:
  C.check_positive_ints(config, "setups.channels")
  C.check_positive_ints(config, "setups.bits")
  C.check_positive_ints(config, "setups.train_bits")
  C.check_range(config, "train.batch_size", 1, integer=True)
  C.check_choice(config, "train.optimizer", ["adam", "sgd"])
  for stage in ("init", "distill", "individual", "baselines"):
    C.check_range(config, f"{stage}.lr", 0, lo_open=True)
    C.check_range(config, f"{stage}.epochs", 1, integer=True)
  C.check_range(config, "cluster.num_clusters", 1, integer=True)
  C.check_range(config, "cluster.steps", 1, integer=True)
  C.check_range(config, "stream.fps", 0, lo_open=True)
  C.check_range(config, "stream.deadline_s", 0, lo_open=True)
  C.check_range(config, "stream.horizon", 1, 50, integer=True)
  C.check_choice(config, "stream.method", ["dp", "milp", "relax"])
  C.check_range(config, "model.width_mult", 0, lo_open=True)
  if max(config.setups.channels) > 32:
    raise ConfigError(
      f"config.setups.channels = {list(config.setups.channels)}: the stem has at most 32 channels"
    )


def run_step(step: str, config, workdir: Path, ablation: str | None = None) -> dict:
  from coinfer import baselines, experiments, stages
  from coinfer import export as export_lib
  from coinfer import train as T
  from common.checkpoint import load_pytree

  ctx = T.build(config)
  if step == "init":
    return stages.initialization(ctx, workdir)
  if step == "cluster":
    return stages.clustering(ctx, workdir)
  if step == "distill":
    names = [ablation] if ablation else list(config.ablations)
    return {n: stages.distillation(ctx, workdir, n) for n in names}
  if step == "individual":
    return stages.individual(ctx, workdir)
  if step == "baselines":
    return {"clio": baselines.train_clio(ctx, workdir), "spinn": baselines.train_spinn(ctx, workdir)}
  if step == "simulate":
    return experiments.run_simulations(ctx, workdir)
  if step == "export":
    variables = load_pytree(Path(workdir) / "distill_I-D-C_final")
    return export_lib.export_all(ctx, variables, workdir)
  if step == "report":
    return {"report": str(experiments.write_report(ctx, workdir))}
  raise ConfigError(f"unknown step {step!r}: must be one of {list(STEPS)}")


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m coinfer.main", description=__doc__.splitlines()[0])
  parser.add_argument("step", choices=STEPS)
  parser.add_argument("--config", default="coinfer/configs/quick.py")
  parser.add_argument("--workdir", default="runs/coinfer")
  parser.add_argument(
    "--ablation", default=None, help="one of I-D-C, noI-D-C, I-noD-C, I-D-noC, ... (distill only)"
  )
  parser.add_argument(
    "--set",
    action="append",
    default=[],
    metavar="KEY=VALUE",
    help="override a config entry, e.g. --set init.epochs=40 (repeatable)",
  )
  args = parser.parse_args(argv)
  config = load_config(args.config, args.set)
  workdir = Path(args.workdir)
  save_config(config, workdir)
  steps = STEPS[:-1] if args.step == "all" else (args.step,)
  for s in steps:
    out = run_step(s, config, workdir, args.ablation)
    print(
      f"{s}: done -> {workdir}",
      {k: v for k, v in out.items() if not isinstance(v, list | dict)} if isinstance(out, dict) else "",
    )
  return 0


if __name__ == "__main__":
  run_main(main)
