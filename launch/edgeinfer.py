"""The `edgeinfer` command: one entry point for every technique and launcher.

  edgeinfer <technique> <step> --config=FILE[:VARIANT] --workdir=DIR [--config.KEY=VALUE ...]
  edgeinfer quickstart [--only=common,agile] [--fast]
  edgeinfer bench <technique> [...]
  edgeinfer train <technique> [--platform=gpu] [--multihost ...] -- <step> --config=... --workdir=...
  edgeinfer <technique> deploy|device ...   (the device-to-server runtime, docs/deploy.md)
  edgeinfer serve --repository=DIR [--port=8001 ...]

`edgeinfer <command> --help` shows a command's steps and flags. Each command is also
`python -m <technique>.main` or `python -m launch.<command>`, with the same flags.
"""

from __future__ import annotations

import importlib
import runpy
import sys

from common.app import TECHNIQUES

LAUNCHERS = {
  "quickstart": "launch.quickstart",
  "bench": "launch.bench",
  "train": "launch.train",
  "serve": "launch.serve",
}
STEP_ALIASES = ("deploy", "device")  # `edgeinfer deploy coinfer ...` = `edgeinfer coinfer deploy ...`


def help_text() -> str:
  """The usage, with the steps of every technique (each package's `main.APP`)."""
  lines = [__doc__.strip(), "", "techniques and their steps:"]
  for name in TECHNIQUES:
    spec = importlib.import_module(f"{name}.main").APP
    lines.append(f"  {name:10s} {' | '.join(spec.step_names())}")
  lines += ["", f"launchers: {', '.join([*LAUNCHERS, *STEP_ALIASES])}"]
  return "\n".join(lines)


def step_alias(step: str, argv: list[str]) -> None:
  """`<alias> <technique> FLAGS` runs `edgeinfer <technique> <step> FLAGS` (techniques with that step)."""
  from common.app import deployable

  names = deployable()
  if not argv or argv[0] not in names:
    got = repr(argv[0]) if argv else "nothing"
    print(f"error: expected a technique with a {step} step, one of {list(names)}; got {got}", file=sys.stderr)
    sys.exit(2)
  importlib.import_module(f"{argv[0]}.main").main([f"edgeinfer {argv[0]}", step, *argv[1:]])


def main(argv: list[str] | None = None) -> None:
  argv = list(sys.argv[1:] if argv is None else argv)
  if not argv or argv[0] in ("-h", "--help", "help"):
    print(help_text())
    sys.exit(0 if argv else 2)
  command, rest = argv[0], argv[1:]
  if command in TECHNIQUES:
    importlib.import_module(f"{command}.main").main([f"edgeinfer {command}", *rest])
    return
  if command in STEP_ALIASES:
    step_alias(command, rest)
    return
  if command in LAUNCHERS:
    sys.argv = [f"edgeinfer {command}", *rest]
    runpy.run_module(LAUNCHERS[command], run_name="__main__", alter_sys=True)
    return
  print(
    f"error: unknown command {command!r}; use one of {[*TECHNIQUES, *LAUNCHERS, *STEP_ALIASES]} (edgeinfer --help)",
    file=sys.stderr,
  )
  sys.exit(2)


if __name__ == "__main__":
  main()
