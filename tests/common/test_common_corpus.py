"""A corpus of malformed inputs fed to every entry point, each in a subprocess as a user runs it.

Every case must end in exit status 2 with one line on stderr, `error: ...`, that names the
offending key, flag or file; no traceback; and the workdir exactly as it was before (same files,
same bytes). The classes: config files (1), values (2), workdir files (3), text that is not
text (4), resource exhaustion (5), stale results and rejected configs (6).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TECHNIQUES = ("agile", "offload", "coinfer", "subnets", "branching")
STEP = {"agile": "train", "offload": "train", "coinfer": "init", "subnets": "knapsack", "branching": "train"}


@dataclasses.dataclass(frozen=True)
class Case:
  id: str
  argv: tuple[str, ...]  # after `python -m`; WORK, TMP are replaced by the case's folders
  named: str  # a word the one-line error must hold
  setup: Callable[[Path, Path], None] | None = None  # setup(work, tmp) before the run


def _write(rel: str, data: bytes | str) -> Callable[[Path, Path], None]:
  def setup(work: Path, tmp: Path) -> None:
    base = tmp if rel.startswith("TMP/") else work
    p = base / rel.removeprefix("TMP/")
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data.encode() if isinstance(data, str) else data)

  return setup


def _npz(rel: str, **arrays) -> Callable[[Path, Path], None]:
  def setup(work: Path, tmp: Path) -> None:
    import numpy as np

    np.savez(tmp / rel.removeprefix("TMP/"), **{k: np.asarray(v) for k, v in arrays.items()})

  return setup


def _entry(tech: str) -> tuple[str, ...]:
  return (f"{tech}.main", STEP[tech], "--workdir=WORK")


def _config_file_cases() -> list[Case]:
  """Class 1 for every technique: the config file and its keys."""
  out = []
  for t in TECHNIQUES:
    e = _entry(t)
    out += [
      Case(f"{t}-config-missing", (*e, "--config=TMP/none.py"), "none.py"),
      Case(
        f"{t}-config-syntax",
        (*e, "--config=TMP/bad.py"),
        "SyntaxError",
        _write("TMP/bad.py", "def get_config(:\n"),
      ),
      Case(
        f"{t}-config-no-get_config", (*e, "--config=TMP/x.py"), "get_config", _write("TMP/x.py", "x = 1\n")
      ),
      Case(f"{t}-config-is-directory", (*e, "--config=TMP"), "not a Python config file"),
      Case(f"{t}-config-unknown-key", (*e, "--config.bogus_key=1"), "bogus_key"),
      Case(f"{t}-config-unknown-nested-key", (*e, "--config.seed.bogus=1"), "seed"),
      Case(f"{t}-config-wrong-type", (*e, "--config.seed=abc"), "seed"),
      Case(f"{t}-config-negative-seed", (*e, "--config.seed=-3"), "seed"),
      Case(f"{t}-config-seed-over-64-bits", (*e, f"--config.seed={2**64}"), "seed"),
      Case(f"{t}-unknown-step", (f"{t}.main", "bogus_step", "--workdir=WORK"), "bogus_step"),
      Case(f"{t}-unknown-flag", (*e, "--bogus_flag=1"), "bogus_flag"),
      Case(
        f"{t}-workdir-is-a-file",
        (f"{t}.main", STEP[t], "--workdir=TMP/f"),
        "not a directory",
        _write("TMP/f", "x"),
      ),
    ]
  return out


SUBNETS = ("subnets.main", "knapsack", "--workdir=WORK")
COUNT = ("branching.main", "count", "--workdir=WORK")
SIM = ("coinfer.main", "simulate", "--workdir=WORK")
NPZ = ("offload.main", "train", "--workdir=WORK", "--config.metrics.source=npz")
_KEYS = ("metric_tr", "metric_ts", "wcost_tr", "wcost_ts", "scost_tr", "scost_ts")
NAN_METRICS = {k: [0.1, 0.5, 0.9] for k in _KEYS} | {"metric_tr": [0.1, float("nan"), 0.9]}
LAUGHS = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
  f"{chr(97 + i)}: &{chr(97 + i)} [{', '.join(['*' + chr(96 + i)] * 9)}]\n" for i in range(1, 9)
)
QUICK = ("launch.quickstart", "--workdir=WORK")


def _other_cases() -> list[Case]:
  return [
    # class 2: values
    Case("subnets-negative-image-size", (*SUBNETS, "--config.data.image_size=-4"), "data.image_size"),
    Case("subnets-negative-limit", (*SUBNETS, "--config.data.limit=-1"), "data.limit"),
    Case(
      "subnets-budgets-not-increasing", (*SUBNETS, "--config.knapsack.budgets=(0.5,0.25)"), "knapsack.budgets"
    ),
    Case("subnets-budget-over-one", (*SUBNETS, "--config.knapsack.budgets=(1.5,)"), "knapsack.budgets"),
    Case("subnets-nan-learning-rate", (*SUBNETS, "--config.pretrain.lr=nan"), "pretrain.lr"),
    Case("subnets-unknown-bn-stats", (*SUBNETS, "--config.finetune.bn_stats=bogus"), "finetune.bn_stats"),
    Case("subnets-unknown-data-set", (*SUBNETS, "--config.data.name=bogus"), "data.name"),
    Case("subnets-bad-variant", (*SUBNETS, "--config=subnets/configs/quick.py:bogus"), "bogus"),
    # class 3 and 6: workdir files and stale results
    Case("subnets-knapsack-without-stamp", SUBNETS, "knapsack.json", _write("knapsack.json", "{}")),
    Case(
      "subnets-importance-garbage", SUBNETS, "importance.npz", _write("importance.npz", b"\x00garbage" * 10)
    ),
    Case(
      "subnets-stale-knapsack", (*SUBNETS, "--config.knapsack.budgets=(0.3,0.6)"), "knapsack.budgets", None
    ),
    # classes 4 and 5: text that is not text, resource exhaustion (branching's network YAML)
    Case(
      "branching-yaml-binary",
      (*COUNT, "--network=TMP/n.yaml"),
      "n.yaml",
      _write("TMP/n.yaml", bytes(range(256)) * 4),
    ),
    Case(
      "branching-yaml-deep",
      (*COUNT, "--network=TMP/n.yaml"),
      "deeper",
      _write("TMP/n.yaml", "a: " + "[" * 5000 + "]" * 5000),
    ),
    Case(
      "branching-yaml-billion-laughs",
      (*COUNT, "--network=TMP/n.yaml"),
      "under the key 'i'",
      _write("TMP/n.yaml", LAUGHS),
    ),
    Case(
      "branching-yaml-wrong-schema",
      (*COUNT, "--network=TMP/n.yaml"),
      "ANYNET",
      _write("TMP/n.yaml", "name: x\n"),
    ),
    Case("branching-yaml-is-directory", (*COUNT, "--network=TMP"), "not a regular file"),
    Case("branching-yaml-missing", (*COUNT, "--network=TMP/none.yaml"), "none.yaml"),
    Case("branching-negative-alpha", ("branching.main", "search", "--alpha=-5"), "--alpha"),
    Case("branching-negative-image-size", (*COUNT, "--image_size=-224"), "image_size"),
    # class 4: coinfer's bandwidth traces
    Case(
      "coinfer-trace-binary",
      (*SIM, "--config.stream.trace_files=('TMP/t.log',)"),
      "binary",
      _write("TMP/t.log", b"1\n2\n\x00\xff\n"),
    ),
    Case(
      "coinfer-trace-unicode-digits",
      (*SIM, "--config.stream.trace_files=('TMP/t.log',)"),
      "t.log",
      _write("TMP/t.log", "１２\n３\n"),
    ),
    Case(
      "coinfer-trace-negative-rate",
      (*SIM, "--config.stream.trace_files=('TMP/t.csv',)"),
      "t.csv",
      _write("TMP/t.csv", "time_s,mbps\n0,1\n1,-3\n"),
    ),
    Case(
      "coinfer-trace-zero-capacity",
      (*SIM, "--config.stream.trace_files=('TMP/z.csv',)"),
      "zero capacity throughout",
      _write("TMP/z.csv", "time_s,mbps\n0,0\n1,0\n"),
    ),
    Case("coinfer-trace-is-directory", (*SIM, "--config.stream.trace_files=('TMP',)"), "not a regular file"),
    Case("coinfer-trace-missing", (*SIM, "--config.stream.trace_files=('TMP/none.csv',)"), "none.csv"),
    Case("coinfer-trace-negative-length", (*SIM, "--config.stream.trace_seconds=-5"), "stream.trace_seconds"),
    Case("coinfer-unknown-trace-kind", (*SIM, "--config.stream.traces=('bogus',)"), "stream.traces"),
    Case(
      "coinfer-unknown-ablation", ("coinfer.main", "distill", "--workdir=WORK", "--ablation=bogus"), "bogus"
    ),
    # class 3: offload's metrics files
    Case(
      "offload-metrics-garbage",
      (*NPZ, "--config.metrics.file=TMP/m.npz"),
      "m.npz",
      _write("TMP/m.npz", b"garbage"),
    ),
    Case(
      "offload-metrics-missing-keys",
      (*NPZ, "--config.metrics.file=TMP/m.npz"),
      "metric_tr",
      _npz("TMP/m.npz", x=[0.0, 1.0]),
    ),
    Case(
      "offload-metrics-nan",
      (*NPZ, "--config.metrics.file=TMP/m.npz"),
      "NaN",
      _npz("TMP/m.npz", **NAN_METRICS),
    ),
    Case("offload-metrics-missing", (*NPZ, "--config.metrics.file=TMP/none.npz"), "none.npz"),
    Case("offload-metrics-empty-path", (*NPZ,), "config.metrics.file"),
    # the quickstart
    Case("quickstart-unknown-stage", (*QUICK, "--only=common,bogus"), "bogus"),
    Case("quickstart-unknown-key", (*QUICK, "--config.train.bogus=1"), "train.bogus"),
    Case("quickstart-wrong-type", (*QUICK, "--config.train.num_epochs=abc"), "num_epochs"),
    Case("quickstart-zero-epochs", (*QUICK, "--config.train.num_epochs=0"), "train.num_epochs"),
    Case("quickstart-negative-image-size", (*QUICK, "--config.data.image_size=-8"), "data.image_size"),
    Case("quickstart-missing-config", (*QUICK, "--config=TMP/none.py"), "none.py"),
    Case("quickstart-stray-argument", (*QUICK, "extra"), "extra"),
    Case("quickstart-coordinator-without-multihost", (*QUICK, "--coordinator=127.0.0.1:1"), "--multihost"),
    # launchers
    Case("train-unknown-technique", ("launch.train", "bogus"), "bogus"),
    Case("bench-unknown-technique", ("launch.bench", "bogus"), "bogus"),
    Case("bench-unknown-flag", ("launch.bench", "offload", "--bogus"), "--bogus"),
    Case("serve-missing-repository", ("launch.serve", "--repository=TMP/none"), "none"),
    Case("serve-unknown-flag", ("launch.serve", "--repository=TMP", "--bogus=1"), "bogus"),
    Case(
      "serve-dashed-flag", ("launch.serve", "--repository=TMP", "--max-message-bytes=5"), "max_message_bytes"
    ),
    Case("serve-port-out-of-range", ("launch.serve", "--repository=TMP", "--port=70000"), "--port"),
    Case(
      "serve-http-port-not-a-number", ("launch.serve", "--repository=TMP", "--http_port=abc"), "http_port"
    ),
    Case(
      "serve-http-port-same-as-port",
      ("launch.serve", "--repository=TMP", "--port=9", "--http_port=9"),
      "--http_port",
    ),
    Case("serve-zero-workers", ("launch.serve", "--repository=TMP", "--workers=0"), "--workers"),
    Case("serve-malformed-switch", ("launch.serve", "--repository=TMP", "--switch=add=1,0,3,10"), "--switch"),
    Case("serve-stray-argument", ("launch.serve", "--repository=TMP", "extra"), "extra"),
    Case("edgeinfer-unknown-command", ("launch.edgeinfer", "bogus"), "bogus"),
  ]


def _stamp(tech: str, *names: str, files: dict[str, bytes | str] | None = None, dirs: tuple[str, ...] = ()):
  """Writes `files` and `dirs` into the workdir and stamps `names` as made from the technique's
  default config (and saves that config, so a rejected run would have to change config.json)."""

  def setup(work: Path, tmp: Path) -> None:
    sys.path.insert(0, str(ROOT))
    import importlib

    from common import app, cli, provenance

    pipeline = importlib.import_module(f"{tech}.pipeline")
    config = app.load_config_file(f"{tech}/configs/quick.py")
    for rel, data in (files or {}).items():
      (work / rel).parent.mkdir(parents=True, exist_ok=True)
      (work / rel).write_bytes(data.encode() if isinstance(data, str) else data)
    for rel in dirs:
      (work / rel).mkdir(parents=True, exist_ok=True)
    view = config
    if tech == "branching":
      view = pipeline.provenance_view(config, pipeline.settings(config))
    provenance.record_all(work, view, pipeline.DEPS, *names)
    cli.save_config(config, work)

  return setup


GOOD_AGILE = {"train.json": '{"accuracy": 0.5, "k": 3}'}
GOOD_BRANCHING = {"train.json": '{"original": {}, "stretched": {}}'}
GARBAGE = b"\x00\x9f garbage {"


def _workdir_cases() -> list[Case]:
  """Classes 3 and 6 in the techniques that skip steps whose outputs exist: a result changed by
  another config, a result without its stamp, a damaged result file, a damaged checkpoint."""
  agile = ("agile.main", "train", "--workdir=WORK")
  coinfer = ("coinfer.main", "init", "--workdir=WORK")
  branching = ("branching.main", "train", "--workdir=WORK")
  return [
    Case(
      "agile-stale-train-result",
      (*agile, "--config.train.lam=0.5"),
      "train.lam",
      _stamp("agile", "train.json", "agile_variables", files=GOOD_AGILE, dirs=("agile_variables",)),
    ),
    Case(
      "agile-stale-reference",
      (*agile, "--config.reference.epochs=3"),
      "reference.epochs",
      _stamp("agile", "reference", dirs=("reference/checkpoints",)),
    ),
    Case(
      "agile-train-result-garbage",
      agile,
      "train.json",
      _stamp(
        "agile", "train.json", "agile_variables", files={"train.json": GARBAGE}, dirs=("agile_variables",)
      ),
    ),
    Case(
      "agile-train-result-without-stamp", agile, "train.json", _write("train.json", GOOD_AGILE["train.json"])
    ),
    Case(
      "coinfer-stale-init-result",
      (*coinfer, "--config.init.lr=0.5"),
      "init.lr",
      _stamp("coinfer", "init.json", files={"init.json": "{}"}),
    ),
    Case(
      "coinfer-init-result-garbage",
      coinfer,
      "init.json",
      _stamp("coinfer", "init.json", files={"init.json": GARBAGE}),
    ),
    Case(
      "coinfer-checkpoint-garbage",
      ("coinfer.main", "cluster", "--workdir=WORK"),
      "init",
      _stamp("coinfer", files={"init/2/default/_METADATA": GARBAGE, "init/2/_CHECKPOINT_METADATA": GARBAGE}),
    ),
    Case(
      "branching-stale-train-result",
      (*branching, "--config.train.base_lr=0.5"),
      "train.base_lr",
      _stamp("branching", "train.json", files=GOOD_BRANCHING),
    ),
    Case(
      "branching-stale-network",
      (*branching, "--config.stretched=tiny/R-tiny-C.yaml"),
      "stretched",
      _stamp("branching", "train.json", files=GOOD_BRANCHING),
    ),
    Case(
      "branching-train-result-garbage",
      branching,
      "train.json",
      _stamp("branching", "train.json", files={"train.json": GARBAGE}),
    ),
    Case(
      "offload-stale-dqn-checkpoints",
      ("offload.main", "train", "--workdir=WORK", "--config.dqn.discount=0.5"),
      "dqn.discount",
      _stamp("offload", "checkpoints", dirs=("checkpoints",)),
    ),
    Case(
      "offload-stale-classifiers",
      ("offload.main", "metrics", "--workdir=WORK", "--config.metrics.classifiers.num_epochs=3"),
      "classifiers.num_epochs",
      _stamp("offload", "weak", "strong", "metrics", dirs=("weak", "metrics")),
    ),
    Case(
      "offload-results-garbage",
      ("offload.main", "simulate", "--workdir=WORK"),
      "results.json",
      _stamp("offload", "results.json", files={"results.json": GARBAGE}),
    ),
  ]


def _npy_as(rel: str) -> Callable[[Path, Path], None]:
  """An .npy file under the name `rel` (np.save would append .npy to the name)."""

  def setup(work: Path, tmp: Path) -> None:
    import numpy as np

    with open(tmp / rel.removeprefix("TMP/"), "wb") as f:
      np.save(f, np.zeros(3))

  return setup


def _network(**anynet) -> Callable[[Path, Path], None]:
  """TMP/n.yaml: the tiny single-branch network with the ANYNET keys `anynet` replaced."""

  def setup(work: Path, tmp: Path) -> None:
    import yaml

    doc = yaml.safe_load((ROOT / "branching/configs/tiny/R-tiny-C.yaml").read_text())
    doc["ANYNET"].update(anynet)
    (tmp / "n.yaml").write_text(yaml.safe_dump(doc))

  return setup


def _config_file(tech: str, key: str, value: object) -> Callable[[Path, Path], None]:
  """TMP/c.py: a config written as a plain dict (the quick config's keys), with `key` set to `value`;
  ml_collections infers its types from the values, so only the technique's `validate` can refuse it."""
  path = "".join(f"[{part!r}]" for part in key.split("."))
  text = (
    f"import ml_collections\nfrom {tech}.configs.quick import get_config as _base\n\n"
    f"def get_config(arg=None):\n  d = _base().to_dict()\n  d{path} = {value!r}\n"
    "  return ml_collections.ConfigDict(d)\n"
  )
  return _write("TMP/c.py", text)


def _first_str_key(tech: str) -> str:
  sys.path.insert(0, str(ROOT))
  from common import app

  config = app.load_config_file(f"{tech}/configs/quick.py")

  def walk(node, prefix=""):
    for k in node.keys():
      v = node[k]
      if hasattr(v, "items"):
        yield from walk(v, f"{prefix}{k}.")
      else:
        yield f"{prefix}{k}", v

  return next(k for k, v in walk(config) if isinstance(v, str))


def _dqn_checkpoint(damage: str) -> Callable[[Path, Path], None]:
  """A stamped, real DQN checkpoint of the quick config's last iteration, then damaged."""

  def setup(work: Path, tmp: Path) -> None:
    _stamp("offload", "checkpoints")(work, tmp)
    from common import app, checkpoint
    from offload import train as otrain

    c = app.load_config_file("offload/configs/quick.py")
    manager = checkpoint.make_manager(work / "checkpoints", max_to_keep=2)
    checkpoint.save(manager, c.dqn.iterations, otrain.init_state(c, otrain.network(c)))
    manager.close()
    step = work / "checkpoints" / str(c.dqn.iterations)
    if damage == "truncated":
      for f in (step / "default").rglob("*"):
        if f.is_file() and f.parent.name == "d":
          f.write_bytes(f.read_bytes()[:10])
    else:
      (step / "_CHECKPOINT_METADATA").write_text("[1, 2]")

  return setup


ALIASED_WIDTHS = (  # 9^7 widths: the bomb sits under ANYNET.WIDTHS, the anchors under other keys
  "ANYNET:\n  STEM_W: 8\n  X0: &a0 [1, 1, 1, 1, 1, 1, 1, 1, 1]\n"
  + "".join(f"  X{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]\n" for i in range(1, 6))
  + f"  WIDTHS: [{', '.join(['*a5'] * 9)}]\n"
)


def _class_cases() -> list[Case]:
  """The classes of the last unclean inputs, each with cases beyond the one first reported."""
  offload_train = ("offload.main", "train", "--workdir=WORK")
  out = [
    # a malformed file or value: the container is not what its name says; a key of the wrong type
    Case(
      "offload-metrics-npy-named-npz",
      (*NPZ, "--config.metrics.file=TMP/m.npz"),
      "m.npz",
      _npy_as("TMP/m.npz"),
    ),
    Case(
      "branching-yaml-width-is-a-string",
      (*COUNT, "--network=TMP/n.yaml"),
      "ANYNET.WIDTHS[1][0]",
      _network(WIDTHS=[[32], ["64"], [128]]),
    ),
    Case(
      "branching-yaml-se-ratio-is-a-string",
      (*COUNT, "--network=TMP/n.yaml"),
      "ANYNET.SE_R",
      _network(SE_R="half"),
    ),
    Case(
      "branching-yaml-se-on-is-a-string",
      (*COUNT, "--network=TMP/n.yaml"),
      "ANYNET.SE_ON",
      _network(SE_ON="no"),
    ),
    Case(
      "branching-yaml-stride-is-a-float",
      (*COUNT, "--network=TMP/n.yaml"),
      "ANYNET.STRIDES[0][0]",
      _network(STRIDES=[[1.0], [2], [2]]),
    ),
    Case(
      "branching-yaml-original-widths-strings",
      (*COUNT, "--network=TMP/n.yaml"),
      "ANYNET.ORIGINAL_WIDTHS[0]",
      _network(ORIGINAL_WIDTHS=["32", 64, 128]),
    ),
    Case("branching-yaml-unknown-key", (*COUNT, "--network=TMP/n.yaml"), "WIDTH", _network(WIDTH=[[32]])),
    Case(
      "coinfer-config-file-limit-string",
      (*SIM, "--config=TMP/c.py"),
      "data.limit",
      _config_file("coinfer", "data.limit", "3"),
    ),
    Case("coinfer-negative-limit", (*SIM, "--config.data.limit=-1"), "data.limit"),
    # a skipped step that trusts a damaged output: it stops, naming the output and the step to rerun
    Case(
      "offload-train-skips-to-a-truncated-checkpoint",
      offload_train,
      "edgeinfer offload train",
      _dqn_checkpoint("truncated"),
    ),
    Case(
      "offload-train-checkpoint-metadata-not-an-object",
      offload_train,
      "checkpoints/150",
      _dqn_checkpoint("metadata"),
    ),
    Case(
      "coinfer-distill-skips-to-damaged-model",
      ("coinfer.main", "distill", "--workdir=WORK"),
      "edgeinfer coinfer distill",
      _stamp(
        "coinfer",
        "distill_I-D-C.json",
        files={
          "distill_I-D-C.json": "{}",
          "distill_I-D-C_correct.npy": b"\x93NUMPY garbage",
          "distill_I-D-C_final/_METADATA": GARBAGE,
        },
      ),
    ),
    # a rejected run: every check that can refuse it runs before anything is written
    Case("subnets-infeasible-budget", (*SUBNETS, "--config.knapsack.budgets=(0.001,)"), "knapsack.budgets"),
    Case("subnets-peak-memory-under-min-widths", (*SUBNETS, "--config.knapsack.peak_bytes=1"), "peak_bytes"),
    Case("subnets-unknown-model-preset", (*SUBNETS, "--config.model.preset=bogus"), "model.preset"),
    Case("coinfer-train-bits-not-in-bits", (*SIM, "--config.setups.train_bits=(3,)"), "setups.train_bits"),
    Case(
      "coinfer-individual-subset-not-a-setup",
      (*SIM, "--config.individual.subset=((5,5),)"),
      "individual.subset",
    ),
    # a message that names what to change: the key that holds a YAML alias bomb
    Case(
      "branching-yaml-alias-bomb-under-a-key",
      (*COUNT, "--network=TMP/n.yaml"),
      "ANYNET.WIDTHS",
      _write("TMP/n.yaml", ALIASED_WIDTHS),
    ),
  ]
  for t in TECHNIQUES:  # a config file that sets a string key to a number
    key = _first_str_key(t)
    out.append(
      Case(
        f"{t}-config-file-string-key-is-a-number",
        (*_entry(t), "--config=TMP/c.py"),
        f"config.{key}",
        _config_file(t, key, 3),
      )
    )
  return out  # fmt: skip


def _deploy_cases() -> list[Case]:
  """The deploy and device steps (every bad value refused before a process starts)."""
  bad_trace = _write("TMP/t.csv", "time_s,mbps\n0,1\n1,abc\n")
  out = []
  for t in ("agile", "offload", "coinfer"):
    dep, dev = (f"{t}.main", "deploy", "--workdir=WORK"), (f"{t}.main", "device", "--workdir=WORK")
    out += [
      Case(f"{t}-deploy-unknown-link", (*dep, "--config.deploy.link=carrier-pigeon"), "config.deploy.link"),
      Case(
        f"{t}-deploy-zero-trace-scale", (*dep, "--config.deploy.trace_scale=0"), "config.deploy.trace_scale"
      ),
      Case(f"{t}-device-server-not-host-port", (*dev, "--config.deploy.server=nohost"), "HOST:PORT"),
    ]
  out += [
    Case("coinfer-deploy-no-frames", ("coinfer.main", "deploy", "--workdir=WORK", "--config.deploy.frames=0"),
         "config.deploy.frames"),
    Case("coinfer-deploy-capture-not-tc", ("coinfer.main", "deploy", "--workdir=WORK", "--config.deploy.capture=True"),
         "config.deploy.capture"),
    Case("agile-deploy-negative-fps", ("agile.main", "deploy", "--workdir=WORK", "--config.deploy.fps=-1"),
         "config.deploy.fps"),
    Case("coinfer-deploy-malformed-trace", ("coinfer.main", "deploy", "--workdir=WORK", "--config.deploy.trace=TMP/t.csv"),
         "not numbers", bad_trace),
    Case("coinfer-deploy-unknown-controller", ("coinfer.main", "deploy", "--workdir=WORK",
         "--config.deploy.controller=greedy"), "config.deploy.controller"),
    Case("offload-deploy-unknown-policy", ("offload.main", "deploy", "--workdir=WORK", "--config.deploy.policy=greedy"),
         "config.deploy.policy"),
    Case("offload-deploy-setting-out-of-range", ("offload.main", "deploy", "--workdir=WORK",
         "--config.deploy.setting=9"), "config.deploy.setting"),
    Case("offload-deploy-unknown-key", ("offload.main", "deploy", "--workdir=WORK", "--config.deploy.bogus=1"),
         "deploy.bogus"),
    Case("offload-deploy-zero-cameras", ("offload.main", "deploy", "--workdir=WORK", "--config.deploy.cameras=0"),
         "config.deploy.cameras"),
    Case("offload-deploy-fleet-unknown-strategy", ("offload.main", "deploy", "--workdir=WORK",
         "--config.deploy.cameras=4", "--config.deploy.strategy=greedy"), "config.deploy.strategy"),
    Case("coinfer-device-without-server", ("coinfer.main", "device", "--workdir=WORK"), "config.deploy.server"),
    Case("deploy-alias-unknown-technique", ("launch.deploy", "subnets", "--workdir=WORK"), "subnets"),
  ]  # fmt: skip
  return out


CASES = _config_file_cases() + _other_cases() + _workdir_cases() + _class_cases() + _deploy_cases()


def _snapshot(d: Path) -> dict[str, str]:
  if not d.exists():
    return {}
  return {
    str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest()
    for p in sorted(d.rglob("*"))
    if p.is_file()
  }


def _stale_knapsack(work: Path) -> None:
  """A knapsack.json stamped by the quick config's budgets (the case's run asks for others)."""
  sys.path.insert(0, str(ROOT))
  from common import app, cli, provenance
  from subnets import pipeline

  config = app.load_config_file("subnets/configs/quick.py")
  (work / "knapsack.json").write_text(json.dumps({"methods": {}}))
  provenance.record(work / "knapsack.json", config, pipeline.DEPS["knapsack.json"])
  cli.save_config(config, work)


def _stamped(work: Path, name: str) -> None:
  """Stamps `name` (already written) as made from the quick config, so only its content is wrong."""
  sys.path.insert(0, str(ROOT))
  from common import app, cli, provenance
  from subnets import pipeline

  config = app.load_config_file("subnets/configs/quick.py")
  provenance.record(work / name, config, pipeline.DEPS[name])
  cli.save_config(config, work)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_malformed_input_is_one_line_exit_2_and_changes_nothing(case: Case, tmp_path: Path):
  work, tmp = tmp_path / "work", tmp_path / "tmp"
  work.mkdir()
  tmp.mkdir()
  (work / "config.json").write_text('{"a good": "config"}')
  if case.setup is not None:
    case.setup(work, tmp)
  if case.id == "subnets-stale-knapsack":
    _stale_knapsack(work)
  if case.id == "subnets-importance-garbage":
    _stamped(work, "importance.npz")
  before = _snapshot(work)
  argv = [a.replace("WORK", str(work)).replace("TMP", str(tmp)) for a in case.argv]
  env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
  env.pop("EDGEINFER_DEBUG", None)
  r = subprocess.run(
    [sys.executable, "-m", *argv], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300
  )
  lines = [line for line in r.stderr.splitlines() if line.strip()]
  assert r.returncode == 2, (r.returncode, r.stderr[-3000:])
  assert "Traceback" not in r.stderr, r.stderr[-3000:]
  errors = [line for line in lines if line.startswith("error: ")]
  assert len(errors) == 1, r.stderr[-3000:]
  assert case.named in errors[0], errors[0]
  assert len(errors[0]) < 600, "an error message quotes at most a short value"
  assert _snapshot(work) == before, "a rejected run changed the workdir"


def test_the_corpus_holds_at_least_sixty_cases():
  assert len(CASES) >= 60
  assert len({c.id for c in CASES}) == len(CASES)


# ---------------------------------------------------------------- every key set to a wrong type
# In-process (a subprocess per key would cost minutes): each key of each config file and variant set
# as a config file could set it, to a value of another type, must be refused by the validation that
# runs before anything is written (`validate` of the technique; the quickstart's common stage), with
# one line naming the key.
WRONG = {bool: "yes", int: "abc", float: "abc", str: 3, tuple: 3, list: 3}
VALIDATE = {
  "launch": "launch.stages.common",  # the quickstart's config, validated by its common stage
}
# Keys whose wrong type no validation refuses, listed exactly (so that closing a gap fails until it
# is removed): none.
KNOWN_GAPS: dict[str, list[str]] = {}


def _wrong_type_cases() -> list[str]:
  sys.path.insert(0, str(ROOT / "tests" / "common"))
  from config_walk import config_args

  return config_args()


@pytest.mark.parametrize("config_arg", _wrong_type_cases())
def test_every_key_set_to_a_wrong_type_is_one_line_naming_it(config_arg):
  import importlib

  from config_walk import field_type, leaves

  from common import app
  from common.errors import EdgeInferError

  pkg = config_arg.split("/")[0]
  validate = importlib.import_module(VALIDATE.get(pkg, f"{pkg}.pipeline")).validate
  accepted, unnamed, crashed = [], [], []
  for key, _ in leaves(app.load_config_file(config_arg)):
    config = app.load_config_file(config_arg, lock=False)
    *parents, leaf = key.split(".")
    node = config
    for part in parents:
      node = node[part]
    bad = WRONG[field_type(config, key)]
    with node.ignore_type():
      node[leaf] = bad
    try:
      validate(config)
    except EdgeInferError as e:
      if f"config.{key}" not in str(e) or "\n" in str(e):
        unnamed.append((key, str(e)))
      continue
    except Exception as e:  # noqa: BLE001 - a traceback a user would see
      crashed.append((key, f"{type(e).__name__}: {e}"))
      continue
    accepted.append(key)
  assert accepted == KNOWN_GAPS.get(pkg, []), f"{config_arg}: accepted a wrong type for {accepted}"
  assert not unnamed, f"{config_arg}: the error does not name the key: {unnamed[:5]}"
  assert not crashed, f"{config_arg}: not a project error (a traceback): {crashed[:5]}"
