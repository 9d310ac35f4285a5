"""The one command line of every technique: absl flags, a config file, a workdir, a step.

  edgeinfer <technique> <step> --config=<file>[:<variant>] --workdir=DIR [--config.<key>=VALUE ...]
  python -m <technique>.main <step> ...        (the same command)

Every `<package>/main.py` is a few lines that hand its `STEPS` to `run`:

  APP = app.App("subnets", pipeline.STEPS, default_config="subnets/configs/quick.py",
                validate=pipeline.validate, context=pipeline.Run)
  if __name__ == "__main__":
    app.run(APP)

`run` parses the flags (`ml_collections.config_flags` with `lock_config=True`: `--config.<key>=VALUE`
sets nested keys and tuples), loads the config once and validates it before anything is written,
builds the package's run context once, and runs the step (or every step of `all`). Every user
error (a config file that does not exist or does not load, an unknown key, a bad value, a bad
step) is one line naming it and exit status 2, through `common.cli.run_main`; `--debug` (or
EDGEINFER_DEBUG=1) shows the traceback instead.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from absl import flags

from common import cli
from common.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent  # the checkout: config paths are also looked up here
# every technique package (`<name>/main.py` offers `APP`): the one list each launcher reads
TECHNIQUES = ("agile", "offload", "coinfer", "subnets", "branching")


def deployable() -> tuple[str, ...]:
  """The techniques whose app has the `deploy` step (a `<name>/deploy.py` with `DEPLOYMENT`)."""
  return tuple(t for t in TECHNIQUES if (ROOT / t / "deploy.py").exists())


FLAGS = flags.FLAGS


@dataclasses.dataclass(frozen=True)
class Step:
  """One step of a package: `fn(ctx)` runs it and returns a summary (a dict, or None)."""

  fn: Callable[[Any], Any]
  help: str
  needs_workdir: bool = True  # False: the step writes nothing there (no config.json is saved)
  saves_config: bool = True  # False: the step reads the run and writes only its own folder (deploy)


@dataclasses.dataclass(frozen=True)
class Context:
  """The default run context: what every step gets when the package has no context of its own."""

  config: Any
  workdir: Path


@dataclasses.dataclass(frozen=True)
class App:
  """A technique's command line.

  Attributes:
    name: the package (`python -m <name>.main`, `edgeinfer <name>`).
    steps: step name -> Step, in pipeline order.
    default_config: the config file used when --config is not given (relative to the checkout).
    validate: `validate(config)`, raising ConfigError; run once, before anything is written.
    context: `context(config, workdir)` builds what the steps share, once per command.
    preflight: `preflight(config, workdir)`, run after validation and before config.json is
      written (e.g. `common.provenance.check`), so a rejected run changes nothing in the workdir.
    all_steps: the steps of `all`, in order (None: no `all` step).
    doc: the package's one-paragraph description for --help.
  """

  name: str
  steps: Mapping[str, Step]
  default_config: str | None = None
  validate: Callable[[Any], None] | None = None
  context: Callable[[Any, Path], Any] = Context
  preflight: Callable[[Any, Path], None] | None = None
  all_steps: Sequence[str] | None = None
  doc: str = ""

  def step_names(self) -> list[str]:
    return [*self.steps, *(["all"] if self.all_steps else [])]


def define_flags() -> None:
  """Defines --config, --workdir and --debug (once per process)."""
  if "workdir" in FLAGS:
    return
  from ml_collections import config_flags

  config_flags.DEFINE_config_file(
    "config",
    None,
    "config file, FILE.py or FILE.py:VARIANT; its keys are set by --config.KEY=VALUE",
    lock_config=True,
  )
  flags.DEFINE_string("workdir", None, "the run's directory (checkpoints, results, report.md); reruns resume")
  flags.DEFINE_bool(
    "debug", False, "show the traceback of an error instead of one line (or EDGEINFER_DEBUG=1)"
  )


def resolve_config_path(value: str) -> str:
  """`FILE[:VARIANT]` with FILE looked up as given, then in the checkout; ConfigError if neither exists."""
  path, sep, variant = value.partition(":")
  p = Path(path)
  if not p.exists() and not p.is_absolute() and (ROOT / p).exists():
    p = ROOT / p
  if not p.exists():
    raise ConfigError(f"--config {value}: {path} does not exist")
  if not p.is_file() or p.suffix != ".py":
    raise ConfigError(f"--config {value}: {path} is not a Python config file (FILE.py with get_config())")
  return f"{p}{sep}{variant}"


def _with_config_path(argv: list[str], default: str | None) -> list[str]:
  """argv with --config's FILE resolved (and the default added when --config is absent)."""
  out, seen = list(argv), False
  for i, a in enumerate(out):
    if a.startswith("--config="):
      out[i], seen = "--config=" + resolve_config_path(a[len("--config=") :]), True
    elif a == "--config" and i + 1 < len(out):
      out[i + 1], seen = resolve_config_path(out[i + 1]), True
  if not seen and default is not None:
    out.insert(1, "--config=" + resolve_config_path(default))
  return out


def _overrides(argv: Sequence[str]) -> list[str]:
  keys = []
  for a in argv:
    if a.startswith("--config.") or a.startswith("--noconfig."):
      keys.append(a.split("=", 1)[0].split(".", 1)[1])
  return keys


def _explain_load_failure(config_arg: str, argv: Sequence[str], error: Exception) -> ConfigError:
  """A one-line ConfigError for a config that failed to load: the file's error or the unknown key."""
  path, _, variant = config_arg.partition(":")
  try:
    spec = importlib.util.spec_from_file_location("edgeinfer_user_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
  except Exception as e:  # noqa: BLE001 - a user's file can raise anything; we name it
    return ConfigError(f"--config {config_arg}: the file does not load: {type(e).__name__}: {e}")
  if not hasattr(module, "get_config"):
    return ConfigError(f"--config {config_arg}: the file has no get_config()")
  try:
    base = module.get_config(variant) if variant else module.get_config()
  except Exception as e:  # noqa: BLE001
    return ConfigError(f"--config {config_arg}: get_config({variant!r}) failed: {type(e).__name__}: {e}")
  from common import config as config_lib

  for key in _overrides(argv):
    try:
      config_lib.get(base, key)
    except ConfigError:
      return ConfigError(f"--config.{key}: the config has no key {key!r}")
  return ConfigError(f"--config {config_arg}: {type(error).__name__}: {error}")


def load_config(argv: Sequence[str]):
  """FLAGS.config, loaded now (ml_collections defers it to first access) with errors as ConfigError."""
  try:
    config = FLAGS.config
  except Exception as e:  # noqa: BLE001 - deferred load errors of every kind become one line
    raise _explain_load_failure(_config_arg(argv), argv, e) from None
  if config is None:
    raise ConfigError("--config is required, e.g. --config=<package>/configs/quick.py")
  return config


def load_config_file(value: str, *, lock: bool = True):
  """The config of `FILE.py[:VARIANT]` (as `--config` reads it), for the quickstart stages and tests.

  Stages and tests name a variant (`coinfer/configs/quick.py:fast`) instead of editing a config.
  """
  path, _, variant = resolve_config_path(value).partition(":")
  spec = importlib.util.spec_from_file_location(f"edgeinfer_config_{Path(path).stem}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(variant) if variant else module.get_config()
  if lock:
    config.lock()
  return config


def help_text(spec: App) -> str:
  width = max(len(s) for s in spec.step_names())
  lines = [
    f"usage: edgeinfer {spec.name} <step> [<step> ...] [--config=FILE[:VARIANT]] [--workdir=DIR] [--config.KEY=VALUE ...]",
    f"       (or python -m {spec.name}.main <step> ...; several steps run in the order given)",
  ]
  if spec.doc:
    lines += ["", spec.doc.strip()]
  lines += ["", "steps:"]
  for name, step in spec.steps.items():
    lines.append(f"  {name:{width}s}  {step.help}")
  if spec.all_steps:
    lines.append(f"  {'all':{width}s}  every step in order: {', '.join(spec.all_steps)}")
  lines += ["", "flags:"]
  by_module = FLAGS.flags_by_module_dict()
  package = f"{spec.name}.main"
  mains = [m for m in by_module if m in ("__main__", package) or m.endswith(f"{spec.name}/main.py")]
  for module in ["common.app", *mains]:
    for flag in by_module.get(module, ()):
      default = "" if flag.default in (None, "") else f" (default {flag.default!r})"
      lines.append(f"  --{flag.name}: {flag.help}{default}")
  if spec.default_config:
    lines.append(f"  (--config defaults to {spec.default_config})")
  return "\n".join(lines)


def _config_arg(argv: Sequence[str]) -> str:
  for i, a in enumerate(argv):
    if a.startswith("--config="):
      return a[len("--config=") :]
    if a == "--config" and i + 1 < len(argv):
      return argv[i + 1]
  return ""


def _parse(argv: list[str]) -> list[str]:
  """FLAGS(argv) (argv with --config resolved), every failure as a one-line ConfigError."""
  try:
    return FLAGS(argv, known_only=False)
  except flags.Error as e:
    if "Error whilst parsing config file" in str(e):
      raise _explain_load_failure(_config_arg(argv), argv, e) from None
    raise ConfigError(str(e).splitlines()[0]) from None
  except Exception as e:  # noqa: BLE001 - loading the user's config file can raise anything
    raise _explain_load_failure(_config_arg(argv), argv, e) from None


def bool_flag(argv: Sequence[str], name: str) -> bool | None:
  """The value a boolean flag `name` has in argv, read the way absl reads it (`--name`,
  `--noname`, `--name=true|false|1|0`; the last one wins), before the full parse needs it; None
  when argv does not set it."""
  value = None
  for a in argv:
    if a in (f"--{name}", f"-{name}"):
      value = True
    elif a in (f"--no{name}", f"-no{name}"):
      value = False
    elif a.startswith((f"--{name}=", f"-{name}=")):
      text = a.split("=", 1)[1].lower()
      value = {"true": True, "1": True, "t": True, "false": False, "0": False, "f": False}.get(text, value)
  return value


def parse_command(argv: Sequence[str], default_config: str | None) -> tuple[list[str], Any]:
  """Parses `argv` (argv[0] the program) and loads the config: (positional arguments, config).

  Every error is a ConfigError: an unknown flag, a bad value, a config file that does not exist
  or does not load, an unknown `--config.KEY`. Also used by launchers with flags of their own.
  """
  define_flags()
  argv = list(argv)
  if bool_flag(argv, "debug"):
    os.environ["EDGEINFER_DEBUG"] = "1"  # before parsing, so parse errors show their traceback too
  argv = _with_config_path(argv, default_config)  # FILE looked up once, the default added
  rest = _parse(argv)
  if FLAGS.debug:
    os.environ["EDGEINFER_DEBUG"] = "1"
  return rest, load_config(argv)


def main(spec: App, argv: Sequence[str]) -> int:
  """Runs the command `argv` (argv[0] is the program) of `spec`; returns the exit status."""
  argv = list(argv)
  if any(a in ("-h", "--help", "-help", "--helpfull") for a in argv[1:]):
    define_flags()
    print(help_text(spec))
    return 0
  rest, config = parse_command(argv, spec.default_config)
  names = spec.step_names()
  asked = rest[1:]
  bad = [a for a in asked if a not in names]
  if not asked or bad or ("all" in asked and len(asked) > 1):
    got = " ".join(asked) or "nothing"
    raise ConfigError(
      f"expected a step (or several, run in the order given), one of {names}, or all alone; got {got} "
      f"(see edgeinfer {spec.name} --help)"
    )
  todo = list(spec.all_steps) if asked == ["all"] else list(dict.fromkeys(asked))
  if any(spec.steps[s].needs_workdir for s in todo) and not FLAGS.workdir:
    if spec.validate is not None:
      spec.validate(config)  # a bad value is named before a missing --workdir
    raise ConfigError(f"--workdir is required, e.g. --workdir=runs/{spec.name}")
  workdir = Path(FLAGS.workdir or ".")  # steps that write nothing there may still read it
  done = lambda name, out: print(f"{name}: {summarize(out)}", flush=True)
  run_steps(spec, config, workdir, todo, on_result=done)
  return 0


def run_steps(spec: App, config, workdir, names: Sequence[str], *, context=None, on_result=None) -> dict:
  """Runs the steps `names` of `spec` as the command line does: validate, preflight and config.json
  (when a step needs the workdir and saves it) before anything else is written, one run context
  (`context(config, workdir)`, default the package's), the steps in order. The quickstart's stages
  and the tests call it too; returns {step: its result}."""
  workdir = Path(workdir)
  if spec.validate is not None:
    spec.validate(config)
  if any(spec.steps[s].needs_workdir for s in names):
    if workdir.exists() and not workdir.is_dir():
      raise ConfigError(f"--workdir {workdir}: exists and is not a directory")
    if spec.preflight is not None:
      spec.preflight(config, workdir)
    if any(spec.steps[s].saves_config for s in names):
      cli.save_config(config, workdir)
  ctx = (context or spec.context)(config, workdir)
  results = {}
  for name in names:
    results[name] = spec.steps[name].fn(ctx)
    if on_result is not None:
      on_result(name, results[name])
  return results


def reported(step: Callable[[Any], Any], write: Callable[[Any], Any]) -> Callable[[Any], Any]:
  """`step`, then `write(ctx)`: the package's report rewritten from what the steps wrote."""

  def fn(ctx):
    out = step(ctx)
    write(ctx)
    return out

  return fn


def summarize(out: Any) -> str:
  """One line of a step's result: its scalar entries (nested dicts and lists are left out)."""
  if not isinstance(out, Mapping):
    return "done" if out is None else str(out)
  small = {k: v for k, v in out.items() if isinstance(v, int | float | str | bool | Path)}
  if not small:
    return "done"
  return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in small.items())


def run(spec: App, argv: Sequence[str] | None = None) -> None:
  """The entry point of `<package>/main.py`: runs `main` with the project's error handling."""
  from common.xla_cpu import set_cpu_flags

  set_cpu_flags()  # before JAX starts its backend: the commands' XLA:CPU options (common/xla_cpu.py)
  define_flags()
  argv = list(sys.argv if argv is None else argv)
  cli.run_main(lambda: main(spec, argv))
