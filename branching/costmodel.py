"""Per-processor latency cost model, calibrated by least squares.

A layer `o` on processor `d` costs

    t_d(o) = a_d[kind(o)] * MACs(o) + b_d * (act_in(o) + act_out(o)) + c_d * n_ops(o)

with kind in {dense conv / FC, depthwise conv, grouped conv}, activation
elements counted as bytes (the artifact runs int8), and `n_ops` the number of
runtime ops (a grouped conv is split into `groups` convs + split + concat, as
the artifact's `op_patch.group_conv` does). Entering or leaving a processor
(a fork to or a join from a branch, or any device change) costs
`s_d + e_d * elements moved` on the non-merge side. A branched stage takes its
slowest branch including its transfers, plus the concat on the merge
device; when several of its branches run on the merge processor itself (the
cores of one CPU, `host`), the stage also pays one fork/join there,
`s_d + e_d * (stage input + output elements)`, calibrated from measurements
(`branching.forkjoin`). A model is stem + stages + merges + head (NN-Stretch §2.3):

    L = L_stem + sum_i [ max_j (L_ij + x_ij) + L_concat_i ] + L_head.

Every quantity is linear in the coefficients given the argmax branch, so a
branch is summarised by a 7-vector of FEATURES and its latency is a dot
product with the processor's coefficient vector (the search uses this).
Coefficients are fitted by non-negative least squares on log latency
(`calibrate`), to the published latencies (`sample_latency_ms.csv`) for the
phone processors and to LiteRT latencies measured here for `host`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence

import numpy as np

from branching import flops
from branching.network import NetConfig, published, published_latencies
from common.errors import ConfigError

# The host's fork/join term (n_xfer ms per branched stage, xfer_elems ms per element of the stage input
# and output), fitted to per-stage measurements of R-50-CD at 224 px on this shared 2-core machine
# (`python -m launch.bench branching_parallel`, load average 13-22; docs/branching.md).
HOST_FORK_JOIN = (0.0, 1.03e-4)
FEATURES = ("macs_conv", "macs_dw", "macs_group", "elems", "n_ops", "n_xfer", "xfer_elems", "conv_pixels")
# Priors (units: ms per feature unit) the fit shrinks towards: a 4-core int8 phone CPU at ~150 GMAC/s.
PRIOR = np.array([4e-9, 1e-8, 2e-9, 2e-7, 3e-2, 2e-1, 2e-7, 1e-5])


@dataclasses.dataclass(frozen=True)
class CostTable:
  """Calibrated coefficients: `coef[d]` is a vector over FEATURES (ms per unit) for processor d."""

  coef: Mapping[str, tuple[float, ...]]

  @property
  def devices(self) -> tuple[str, ...]:
    return tuple(self.coef)

  def vector(self, device: str) -> np.ndarray:
    if device not in self.coef:
      raise ConfigError(f"processor {device!r} has no calibrated costs; known: {list(self.coef)}")
    return np.asarray(self.coef[device], np.float64)


def op_features(o: flops.Op) -> np.ndarray:
  f = np.zeros(len(FEATURES))
  if o.kind in ("conv", "fc"):
    f[0] = o.macs
  elif o.kind == "dwconv":
    f[1] = o.macs
  elif o.kind == "gconv":
    f[2] = o.macs
  f[3] = o.act_in + o.act_out
  f[4] = o.groups + 2 if o.kind == "gconv" else 1
  if o.kind in ("conv", "dwconv", "gconv"):
    f[7] = o.pixels * (o.groups if o.kind == "gconv" else 1)
  return f


def xfer_features(elems: int) -> np.ndarray:
  f = np.zeros(len(FEATURES))
  f[5], f[6] = 1.0, elems
  return f


@dataclasses.dataclass(frozen=True)
class Segment:
  """Sequential part (one entry in `parts`) or a fork/join stage (one entry per branch)."""

  parts: tuple[tuple[str, np.ndarray], ...]  # (device, summed features incl. transfers)
  merge: tuple[str, np.ndarray] | None = None


def segments(
  c: NetConfig, image_size: int = 224, device_map: Mapping[str, str] | None = None
) -> list[Segment]:
  """The model as a list of segments with feature vectors, transfers included."""
  dm = dict(device_map or {})
  # The artifact's Keras/TFLite MBConv has no squeeze-and-excitation (digest §1.6): the published
  # latencies were measured without it, so SE layers are left out of the latency model.
  all_ops = [o for o in flops.ops(c, image_size) if "_se_" not in o.name]
  n = len(c.stages)
  out: list[Segment] = []
  prev_dev, prev_elems = dm.get(c.stem_device, c.stem_device), 0

  def seq(ops_: list[flops.Op]):
    nonlocal prev_dev, prev_elems
    for o in ops_:
      d = dm.get(o.device, o.device)
      f = op_features(o)
      if d != prev_dev:  # device change: pay on the accelerator side (the non-merge one)
        side = d if d != dm.get(c.merge_device, c.merge_device) else prev_dev
        out.append(Segment(((side, xfer_features(o.act_in)),)))
      out.append(Segment(((d, f),)))
      prev_dev, prev_elems = d, o.act_out

  for i in range(-1, n + 1):
    st_ops = [o for o in all_ops if o.stage == i]
    if 0 <= i < n and c.stages[i].branched:
      md = dm.get(c.merge_device, c.merge_device)
      parts = []
      in_elems = st_ops[0].act_in
      for j in range(len(c.stages[i].branches)):
        b_ops = [o for o in st_ops if o.branch == j]
        d = dm.get(b_ops[0].device, b_ops[0].device)
        f = sum(op_features(o) for o in b_ops)
        if d != md:
          f = f + xfer_features(in_elems + b_ops[-1].act_out) + xfer_features(0)
        parts.append((d, f))
      concat = [o for o in st_ops if o.branch == -1]
      merge_f = sum(op_features(o) for o in concat)
      if sum(d == md for d, _ in parts) > 1:
        # Several branches on the merge processor run on its other cores (the host): the stage pays one
        # fork/join, handing the input out and the outputs back, on the merge side.
        merge_f = merge_f + xfer_features(in_elems + concat[-1].act_out)
      out.append(Segment(tuple(parts), merge=(md, merge_f)))
      prev_dev, prev_elems = md, concat[-1].act_out
    else:
      seq(st_ops)
  return out


def predict(
  config: NetConfig,
  processors: CostTable | None = None,
  *,
  image_size: int = 224,
  device_map: Mapping[str, str] | None = None,
  breakdown: bool = False,
):
  """Predicted latency in ms of `config` on the processors of `processors` (default: calibrated mi phone)."""
  table = processors if processors is not None else default_table()
  total, rows = 0.0, []
  for seg in segments(config, image_size, device_map):
    lats = [float(table.vector(d) @ f) for d, f in seg.parts]
    t = max(lats)
    if seg.merge is not None:
      t += float(table.vector(seg.merge[0]) @ seg.merge[1])
    total += t
    rows.append(lats)
  return (total, rows) if breakdown else total


# ---------------------------------------------------------------- calibration

MODELS = ("R-34", "R-50", "RX-1.6", "RX-4", "EN-L4", "EN-B5")
VARIANTS = ("C", "G", "D", "CG", "CD")


def published_dataset(phone: str = "mi") -> list[tuple[str, NetConfig, float]]:
  """(name, config, published ms) for every config with a published latency."""
  lat = published_latencies()
  return [(f"{m}-{v}", published(f"{m}-{v}", phone), lat[f"{m}-{v}"]) for m in MODELS for v in VARIANTS]


def _predict_log(theta_log: np.ndarray, devs: Sequence[str], segs_list, prior_scale=None) -> np.ndarray:
  coef = {d: np.exp(theta_log[k * len(FEATURES) : (k + 1) * len(FEATURES)]) for k, d in enumerate(devs)}
  out = []
  for segs in segs_list:
    t = 0.0
    for seg in segs:
      t += max(coef[d] @ f for d, f in seg.parts)
      if seg.merge is not None:
        t += coef[seg.merge[0]] @ seg.merge[1]
    out.append(np.log(t))
  return np.asarray(out)


def calibrate(
  samples: Sequence[tuple[NetConfig, float]],
  devices: Sequence[str],
  *,
  image_size: int = 224,
  ridge: float = 0.01,
  device_map: Mapping[str, str] | None = None,
  prior: np.ndarray | None = None,
) -> CostTable:
  """Least-squares fit of the coefficients of `devices` to (config, measured ms) samples.

  Minimises sum (log pred - log measured)^2 + ridge * sum (log coef - log prior)^2
  over log-coefficients (so they stay positive), with scipy's trust-region solver.
  """
  from scipy.optimize import least_squares

  devs = list(devices)
  segs_list = [segments(c, image_size, device_map) for c, _ in samples]
  y = np.log(np.asarray([ms for _, ms in samples]))
  p0 = np.log(np.tile(PRIOR if prior is None else prior, len(devs)))

  def resid(th):
    return np.concatenate([_predict_log(th, devs, segs_list) - y, np.sqrt(ridge) * (th - p0)])

  sol = least_squares(resid, p0, method="trf")
  th = np.exp(sol.x)
  k = len(FEATURES)
  return CostTable({d: tuple(float(v) for v in th[i * k : (i + 1) * k]) for i, d in enumerate(devs)})


@functools.lru_cache(maxsize=4)
def default_table(phone: str = "mi") -> CostTable:
  """CPU, GPU and DSP coefficients fitted to all 30 published latencies."""
  data = published_dataset(phone)
  return calibrate([(c, ms) for _, c, ms in data], ("cpu", "gpu", "dsp"))


def leave_one_model_out(phone: str = "mi") -> list[dict]:
  """Calibrate on five model families, predict the sixth's 5 configs; one row per config."""
  data = published_dataset(phone)
  rows = []
  for m in MODELS:
    train = [(c, ms) for name, c, ms in data if not name.startswith(m + "-")]
    table = calibrate(train, ("cpu", "gpu", "dsp"))
    for name, c, ms in data:
      if name.startswith(m + "-"):
        pred = predict(c, table)
        rows.append({"config": name, "published_ms": ms, "predicted_ms": pred, "rel_err": pred / ms - 1})
  return rows
