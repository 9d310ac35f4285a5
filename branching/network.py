"""The published NN-Stretch YAML schema (pycls `ANYNET` section) as frozen dataclasses.

`load(path)` reads a per-phone YAML (e.g. `configs/published/mi/R-50-CD.yaml`),
validates it and returns a `NetConfig`; `dump(config)` / `save(config, path)`
write the same schema back. Stage `i` has one `Branch` per entry of
`DEPTHS[i]`; branch `j` runs on `DEVICES[j]`. Every other YAML section
(OPTIM, TRAIN, TEST, ...) is kept verbatim in `NetConfig.other`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from branching import netschema
from branching.netschema import ACTIVATIONS, BLOCK_TYPES, DEVICES, STEM_TYPES  # noqa: F401 - re-exported
from common import safeio
from common.errors import ConfigError

CONFIG_DIR = Path(__file__).parent / "configs"
PUBLISHED_DIR = CONFIG_DIR / "published"


@dataclasses.dataclass(frozen=True)
class Branch:
  """One branch of a stage: `depth` blocks of output width `width` on `device`."""

  device: str
  depth: int
  width: int
  stride: int
  bot_mul: float
  group_w: int
  activation: str


@dataclasses.dataclass(frozen=True)
class Stage:
  """A stage: parallel branches concatenated on channels (one branch = sequential stage)."""

  branches: tuple[Branch, ...]
  original_width: int
  kernel: int = 3

  @property
  def branched(self) -> bool:
    return len(self.branches) > 1

  @property
  def out_width(self) -> int:
    """Channels leaving the stage (sum of branch widths; with MB_VER 1 the stated o_i)."""
    return sum(b.width for b in self.branches)


@dataclasses.dataclass(frozen=True)
class NetConfig:
  """A (multi-branch) AnyNet: stem, stages, head, device tags."""

  name: str
  block_type: str
  stem_type: str
  stem_w: int
  stem_k: int
  stages: tuple[Stage, ...]
  devices: tuple[str, ...]
  stem_device: str
  head_device: str
  merge_device: str
  num_classes: int = 1000
  head_w: int = 0
  mb_ver: int = 2
  se_on: bool = False
  se_r: float = 0.25
  activation: str = "relu"
  other: Mapping[str, Any] = dataclasses.field(default_factory=dict, compare=False, hash=False)

  def stage_out_width(self, i: int) -> int:
    """Input width of stage i+1 (o_i with MB_VER 1, the sum of branch widths with MB_VER 2)."""
    st = self.stages[i]
    return st.original_width if self.mb_ver == 1 else st.out_width

  def replace(self, **changes) -> NetConfig:
    return dataclasses.replace(self, **changes)


def _err(name: str, key: str, value: Any, allowed: str) -> ConfigError:
  return ConfigError(f"{name}: ANYNET.{key} = {safeio.quote(value)}: {allowed}")


def _nested(name, key, v, n_stages) -> list[list]:
  if not isinstance(v, list) or len(v) != n_stages:
    raise _err(name, key, v, f"must be a list of {n_stages} per-stage lists")
  return [x if isinstance(x, list) else [x] for x in v]


def _per_stage(name, key, v, n_stages) -> list:
  if len(v) != n_stages:
    raise _err(name, key, v, f"must be a list of {n_stages} values, one per stage")
  return v


def _stage_branches(name, i: int, block: str, devices, depths, lists: dict, acts: list, glob_act: str):
  """Stage i's branches from the per-branch lists (each checked to cover DEPTHS[i]'s branches)."""
  nb = len(depths[i])
  if nb > len(devices):
    raise _err(name, f"DEPTHS[{i}]", depths[i], f"has {nb} branches but DEVICES lists {len(devices)}")
  for key, lst in lists.items():
    if len(lst[i]) < nb:
      raise _err(name, f"{key}[{i}]", lst[i], f"needs {nb} entries, one per branch of DEPTHS[{i}]")
  branches = []
  for j in range(nb):
    w, bm, gw = lists["WIDTHS"][i][j], lists["BOT_MULS"][i][j], lists["GROUP_WS"][i][j]
    if block != "mbconv" and int(round(w * bm)) % gw:
      raise _err(name, f"GROUP_WS[{i}][{j}]", gw, f"must divide the bottleneck width {int(round(w * bm))}")
    act = acts[j] if j < len(acts) else glob_act
    branches.append(Branch(devices[j], depths[i][j], w, lists["STRIDES"][i][j], float(bm), int(gw), act))
  return tuple(branches)


def from_dict(d: Mapping[str, Any], name: str = "config") -> NetConfig:
  """Validates a parsed YAML document (every key against `netschema.SCHEMA`, then the keys
  against each other) and builds the `NetConfig`."""
  netschema.check(d, name)
  a = dict(d["ANYNET"])
  model = dict(d.get("MODEL") or {})
  block, stem_type, devices = a["BLOCK_TYPE"], a["STEM_TYPE"], a["DEVICES"]
  n = len(a["DEPTHS"])
  depths = _nested(name, "DEPTHS", a["DEPTHS"], n)
  widths = _nested(name, "WIDTHS", a["WIDTHS"], n)
  strides = _nested(name, "STRIDES", a["STRIDES"], n)
  bot = a["BOT_MULS"]
  if len(bot) != n:
    raise _err(name, "BOT_MULS", bot, f"must be a list of {n} numbers (or per-branch lists)")
  bot = [x if isinstance(x, list) else [x] * len(depths[i]) for i, x in enumerate(bot)]
  if block == "mbconv":
    gws = [[0] * len(dd) for dd in depths]
    if "KERNELS" not in a:
      raise _err(name, "KERNELS", None, f"mbconv needs a list of {n} kernel sizes")
    kernels = _per_stage(name, "KERNELS", a["KERNELS"], n)
  else:
    if "GROUP_WS" not in a:
      raise ConfigError(f"{name}: ANYNET.GROUP_WS is required for {block}")
    gws = _nested(name, "GROUP_WS", a["GROUP_WS"], n)
    kernels = [3] * n
  mb_ver = a.get("MB_VER", 2)
  act_a = a.get("ACTIVATION_FUN")
  glob_act = (act_a if isinstance(act_a, str) else None) or model.get("ACTIVATION_FUN", "relu")
  acts = act_a if isinstance(act_a, list) else []
  widths_o = _per_stage(name, "ORIGINAL_WIDTHS", a.get("ORIGINAL_WIDTHS") or [sum(w) for w in widths], n)
  lists = {"WIDTHS": widths, "STRIDES": strides, "BOT_MULS": bot, "GROUP_WS": gws}
  stages = [
    Stage(_stage_branches(name, i, block, devices, depths, lists, acts, glob_act), widths_o[i], kernels[i])
    for i in range(n)
  ]
  return NetConfig(
    name=name,
    block_type=block,
    stem_type=stem_type,
    stem_w=a["STEM_W"],
    stem_k=a.get("STEM_K", 7 if stem_type == "res_stem_in" else 3),
    stages=tuple(stages),
    devices=tuple(devices),
    stem_device=a.get("STEM_DEVICE", devices[0]),
    head_device=a.get("HEAD_DEVICE", devices[0]),
    merge_device=a.get("MERGE_DEVICE", devices[0]),
    num_classes=model.get("NUM_CLASSES", 1000),
    head_w=a.get("HEAD_W", 0),
    mb_ver=mb_ver,
    se_on=a.get("SE_ON", False),
    se_r=float(a.get("SE_R", 0.25)),
    activation=glob_act,
    other={k: v for k, v in d.items() if k != "ANYNET"},
  )


def load(path: str | os.PathLike) -> NetConfig:
  """Reads and validates a published-schema YAML file; raises ConfigError on any problem."""
  path = Path(path)
  if not path.exists():
    alts = [d / path for d in (CONFIG_DIR, PUBLISHED_DIR) if (d / path).exists()]
    if not alts:
      raise ConfigError(f"config file {path} not found (shipped ones are under {CONFIG_DIR})")
    path = alts[0]
  doc = safeio.load_yaml(path, what="network config", error=ConfigError)
  return from_dict(doc, name=path.stem)


def to_dict(c: NetConfig) -> dict[str, Any]:
  """The YAML document of a config (the published schema)."""

  def per_stage(f):
    return [[f(b) for b in st.branches] for st in c.stages]

  anynet: dict[str, Any] = {
    "STEM_TYPE": c.stem_type,
    "STEM_W": c.stem_w,
    "STEM_K": c.stem_k,
    "BLOCK_TYPE": c.block_type,
    "STRIDES": per_stage(lambda b: b.stride),
    "DEPTHS": per_stage(lambda b: b.depth),
    "WIDTHS": per_stage(lambda b: b.width),
    "BOT_MULS": [
      [_num(b.bot_mul) for b in st.branches]
      if len({b.bot_mul for b in st.branches}) > 1
      else _num(st.branches[0].bot_mul)
      for st in c.stages
    ],
  }
  if c.block_type == "mbconv":
    anynet["KERNELS"] = [st.kernel for st in c.stages]
  else:
    anynet["GROUP_WS"] = per_stage(lambda b: b.group_w)
  if c.head_w:
    anynet["HEAD_W"] = c.head_w
  anynet.update(
    DEVICES=list(c.devices),
    HEAD_DEVICE=c.head_device,
    STEM_DEVICE=c.stem_device,
    MERGE_DEVICE=c.merge_device,
    ORIGINAL_WIDTHS=[st.original_width for st in c.stages],
    SE_ON=c.se_on,
    MB_VER=c.mb_ver,
  )
  acts = [None] * len(c.devices)
  for st in c.stages:
    for j, b in enumerate(st.branches):
      acts[j] = b.activation
  if any(a not in (None, c.activation) for a in acts):
    anynet["ACTIVATION_FUN"] = [a or c.activation for a in acts]
  model = dict(c.other.get("MODEL") or {"TYPE": "mbanynet"})
  model.update(NUM_CLASSES=c.num_classes, ACTIVATION_FUN=c.activation)
  doc = {"MODEL": model, "ANYNET": anynet}
  doc.update({k: v for k, v in c.other.items() if k != "MODEL"})
  return doc


def _num(x: float):
  return int(x) if float(x).is_integer() else float(x)


def dump(c: NetConfig) -> str:
  return yaml.safe_dump(to_dict(c), sort_keys=False, default_flow_style=None)


def save(c: NetConfig, path: str | os.PathLike) -> Path:
  from common.export import write_atomic

  return write_atomic(path, dump(c).encode())


def published(name: str, phone: str = "mi") -> NetConfig:
  """A shipped config by name, e.g. `published("R-50-CD")`."""
  return load(PUBLISHED_DIR / phone / f"{name}.yaml")


def published_latencies() -> dict[str, float]:
  """Published whole-model latencies in ms (`sample_latency_ms.csv`, mi phone, min of 50 runs)."""
  import csv

  out = {}
  with open(PUBLISHED_DIR / "sample_latency_ms.csv") as f:
    for row in csv.DictReader(f):
      out[Path(row["cfg"]).stem] = float(row["latency"]) / 1000.0
  return out


def single_branch(c: NetConfig, device: str) -> NetConfig:
  """The config with every stage reduced to its first branch, all on `device`."""
  stages = tuple(
    Stage((dataclasses.replace(st.branches[0], device=device),), st.branches[0].width, st.kernel)
    for st in c.stages
  )
  return c.replace(
    stages=stages, devices=(device,), stem_device=device, head_device=device, merge_device=device, mb_ver=2
  )
