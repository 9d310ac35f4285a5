"""The `edgeinfer` command: one entry point for every technique and launcher.

  edgeinfer <technique> <step> --config=FILE[:VARIANT] --workdir=DIR [--config.KEY=VALUE ...]
  edgeinfer quickstart [--only=common,agile] [--fast]
  edgeinfer bench <technique> [...]
  edgeinfer train <technique> [--platform=gpu] [--multihost ...] -- <step> --config=... --workdir=...
  edgeinfer serve|device|deploy ...         (the device-to-server runtime, docs/deploy.md)

`edgeinfer <command> --help` shows a command's steps and flags. Each command is also
`python -m <technique>.main` or `python -m launch.<command>`, with the same flags.
"""

from __future__ import annotations

import importlib
import runpy
import sys

TECHNIQUES = ("agile", "offload", "coinfer", "subnets", "branching")
LAUNCHERS = {
  "quickstart": "launch.quickstart",
  "bench": "launch.bench",
  "train": "launch.train",
  "serve": "launch.serve",
  "device": "launch.device",
  "deploy": "launch.deploy",
}


def help_text() -> str:
  """The usage, with the steps of every technique (each package's `main.APP`)."""
  lines = [__doc__.strip(), "", "techniques and their steps:"]
  for name in TECHNIQUES:
    spec = importlib.import_module(f"{name}.main").APP
    lines.append(f"  {name:10s} {' | '.join(spec.step_names())}")
  lines += ["", f"launchers: {', '.join(LAUNCHERS)}"]
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
  argv = list(sys.argv[1:] if argv is None else argv)
  if not argv or argv[0] in ("-h", "--help", "help"):
    print(help_text())
    sys.exit(0 if argv else 2)
  command, rest = argv[0], argv[1:]
  if command in TECHNIQUES:
    importlib.import_module(f"{command}.main").main([f"edgeinfer {command}", *rest])
    return
  if command in LAUNCHERS:
    sys.argv = [f"edgeinfer {command}", *rest]
    runpy.run_module(LAUNCHERS[command], run_name="__main__", alter_sys=True)
    return
  print(
    f"error: unknown command {command!r}; use one of {[*TECHNIQUES, *LAUNCHERS]} (edgeinfer --help)",
    file=sys.stderr,
  )
  sys.exit(2)


if __name__ == "__main__":
  main()
