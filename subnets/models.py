"""REDS models (Flax Linen) whose prunable layers are described by one width each.

A model is built from a frozen `ModelConfig`; `widths` holds the number of
units (neurons, filters) of every prunable layer. A subnetwork of a dense model
is the same architecture with smaller widths, and its parameters are the
channel prefixes of the dense parameters (see `subnets.surgery`). Which axis of
which parameter belongs to which prunable layer is given by `unit_axes`.

Kinds:
  * "dnn"   : flatten -> fc_0 .. fc_(L-1) (ReLU) -> head (Hello Edge DNN).
  * "cnn"   : conv_0 -> conv_1 (BN, ReLU) -> linear bottleneck -> fc (BN, ReLU) -> head
              (Hello Edge CNN; the two convolutions are prunable).
  * "ds_cnn": conv_0 (BN, act) -> [dw_i 3x3 (BN, act) -> pw_i 1x1 (BN, act)] x (L-1)
              -> global average pool -> head (DS-CNN; MobileNetV1 is a 13-block DS-CNN).
"""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from common.batchnorm import BatchNorm
from common.errors import ConfigError
from common.mobilenet import DepthwiseConv

KINDS = ("dnn", "cnn", "ds_cnn")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Architecture of a REDS model.

  Attributes:
    kind: "dnn", "cnn" or "ds_cnn".
    widths: units of each prunable layer.
    num_classes: classifier outputs.
    first_kernel, first_stride: the first convolution (cnn, ds_cnn).
    dw_strides: stride of each depthwise-separable block (ds_cnn; len(widths) - 1).
    second_kernel, second_stride: the second convolution (cnn).
    bottleneck, hidden: the linear bottleneck and hidden FC sizes (cnn).
    activation: "relu" or "leaky_relu".
    shifted_depthwise: ds_cnn's depthwise convs as shifted multiply-adds (training on
      XLA:CPU) or grouped (export: TFLite DEPTHWISE_CONV_2D); same parameters.
  """

  kind: str = "ds_cnn"
  widths: tuple[int, ...] = (64, 64, 64, 64, 64)
  num_classes: int = 10
  first_kernel: tuple[int, int] = (3, 3)
  first_stride: tuple[int, int] = (2, 2)
  dw_strides: tuple[int, ...] = (1, 1, 1, 1)
  second_kernel: tuple[int, int] = (10, 4)
  second_stride: tuple[int, int] = (2, 1)
  bottleneck: int = 16
  hidden: int = 128
  activation: str = "relu"
  shifted_depthwise: bool = True

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ConfigError(f"config.model.kind = {self.kind!r}: must be one of {list(KINDS)}")
    if not self.widths or any(int(w) < 1 for w in self.widths):
      raise ConfigError(f"config.model.widths = {self.widths}: must be positive integers")
    if self.kind == "cnn" and len(self.widths) != 2:
      raise ConfigError(f"config.model.widths = {self.widths}: the cnn has exactly 2 prunable convolutions")
    if self.kind == "ds_cnn" and len(self.dw_strides) != len(self.widths) - 1:
      raise ConfigError(
        f"config.model.dw_strides = {self.dw_strides}: needs one stride per block "
        f"({len(self.widths) - 1} for widths {self.widths})"
      )
    if self.activation not in ("relu", "leaky_relu"):
      raise ConfigError(f"config.model.activation = {self.activation!r}: must be relu or leaky_relu")

  def with_widths(self, widths) -> ModelConfig:
    return dataclasses.replace(self, widths=tuple(int(w) for w in widths))


def preset(name: str, num_classes: int = 12, **overrides) -> ModelConfig:
  """Named architectures of the paper (KWS inputs are 49x10x1 MFCCs)."""
  mobilenet_widths = (32, 64, 128, 128, 256, 256, 512, 512, 512, 512, 512, 512, 1024, 1024)
  table = {
    "dnn_s": dict(kind="dnn", widths=(144, 144, 144)),
    "dnn_l": dict(kind="dnn", widths=(436, 436, 436)),
    "cnn_s": dict(kind="cnn", widths=(28, 30), first_kernel=(10, 4), first_stride=(1, 1), bottleneck=16),
    "cnn_l": dict(kind="cnn", widths=(60, 76), first_kernel=(10, 4), first_stride=(1, 1), bottleneck=58),
    "ds_cnn_s": dict(widths=(64,) * 5, first_kernel=(10, 4), first_stride=(2, 2), dw_strides=(1,) * 4),
    "ds_cnn_l": dict(
      widths=(276,) * 6, first_kernel=(10, 4), first_stride=(2, 1), dw_strides=(2, 1, 1, 1, 1)
    ),
    "ds_cnn_s_vision": dict(
      widths=(64,) * 5, first_kernel=(3, 3), first_stride=(2, 2), dw_strides=(1,) * 4, activation="leaky_relu"
    ),
    "mobilenet_v1": dict(
      widths=tuple(max(8, int(w * overrides.pop("alpha", 0.25))) for w in mobilenet_widths),
      first_kernel=(3, 3),
      first_stride=(2, 2),
      dw_strides=(1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1),
    ),
  }
  if name not in table:
    raise ConfigError(f"config.model.preset = {name!r}: must be one of {sorted(table)} or 'custom'")
  kw = {**table[name], "num_classes": num_classes, **overrides}
  kw = {k: tuple(v) if isinstance(v, list) else v for k, v in kw.items()}
  return ModelConfig(**kw)


def _act(cfg: ModelConfig, x):
  return nn.leaky_relu(x, 0.1) if cfg.activation == "leaky_relu" else nn.relu(x)


BN_MOMENTUM = 0.9


def _bn(train: bool, name: str):
  return BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM, epsilon=1e-5, name=name)


class RedsNet(nn.Module):
  """The model of `cfg`; __call__(x, *, train) -> (logits, aux)."""

  cfg: ModelConfig

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    c = self.cfg
    ws = c.widths
    if c.kind == "dnn":
      h = x.reshape(x.shape[0], -1)
      for i, w in enumerate(ws):
        h = nn.relu(nn.Dense(w, name=f"fc{i}")(h))
    elif c.kind == "cnn":
      h = nn.Conv(ws[0], c.first_kernel, c.first_stride, padding="SAME", use_bias=False, name="conv0")(x)
      h = _act(c, _bn(train, "bn0")(h))
      h = nn.Conv(ws[1], c.second_kernel, c.second_stride, padding="SAME", use_bias=False, name="conv1")(h)
      h = _act(c, _bn(train, "bn1")(h))
      h = nn.DenseGeneral(c.bottleneck, axis=(-3, -2, -1), name="lin")(h)  # kernel [H, W, C, F]
      h = nn.Dense(c.hidden, use_bias=False, name="fc")(h)
      h = _act(c, _bn(train, "bnfc")(h))
    else:
      h = nn.Conv(ws[0], c.first_kernel, c.first_stride, padding="SAME", use_bias=False, name="conv0")(x)
      h = _act(c, _bn(train, "bn0")(h))
      for i in range(1, len(ws)):
        s = c.dw_strides[i - 1]
        h = DepthwiseConv(3, s, nn.initializers.lecun_normal(), "SAME", c.shifted_depthwise, name=f"dw{i}")(h)
        h = _act(c, _bn(train, f"dwbn{i}")(h))
        h = nn.Conv(ws[i], (1, 1), use_bias=False, name=f"pw{i}")(h)
        h = _act(c, _bn(train, f"pwbn{i}")(h))
      h = jnp.mean(h, axis=(1, 2))
    logits = nn.Dense(c.num_classes, name="head")(h)
    return logits, {}


# Axis tags: (layer, role). role "out" = the unit's own parameters (or a channel
# that passes it through, like a depthwise kernel or a BN); role "in" = a
# consumer's input axis. Zeroing "in" axes beyond a width removes the units.
OUT, IN = "out", "in"


def _bn_tags(name: str, layer: int) -> dict:
  t = ((layer, OUT),)
  return {("params", name, "scale"): t, ("params", name, "bias"): t, ("batch_stats", name, "mean"): t,
          ("batch_stats", name, "var"): t}  # fmt: skip


def unit_axes(cfg: ModelConfig) -> dict[tuple[str, ...], tuple]:
  """{(collection, module, param): per-axis tag (layer, role) or None} for tagged arrays.

  Arrays not listed have no prunable axis.
  """
  L = len(cfg.widths)
  tags: dict[tuple[str, ...], tuple] = {}
  if cfg.kind == "dnn":
    for i in range(L):
      tags[("params", f"fc{i}", "kernel")] = (None if i == 0 else (i - 1, IN), (i, OUT))
      tags[("params", f"fc{i}", "bias")] = ((i, OUT),)
  elif cfg.kind == "cnn":
    tags[("params", "conv0", "kernel")] = (None, None, None, (0, OUT))
    tags |= _bn_tags("bn0", 0)
    tags[("params", "conv1", "kernel")] = (None, None, (0, IN), (1, OUT))
    tags |= _bn_tags("bn1", 1)
    tags[("params", "lin", "kernel")] = (None, None, (1, IN), None)
    return tags
  else:
    tags[("params", "conv0", "kernel")] = (None, None, None, (0, OUT))
    tags |= _bn_tags("bn0", 0)
    for i in range(1, L):
      tags[("params", f"dw{i}", "kernel")] = (None, None, None, (i - 1, OUT))
      tags |= _bn_tags(f"dwbn{i}", i - 1)
      tags[("params", f"pw{i}", "kernel")] = (None, None, (i - 1, IN), (i, OUT))
      tags |= _bn_tags(f"pwbn{i}", i)
  tags[("params", "head", "kernel")] = ((L - 1, IN), None)
  return tags


def init_variables(cfg: ModelConfig, key: jax.Array, input_shape) -> dict:
  """Initial {"params", "batch_stats"} for inputs of shape input_shape (no batch)."""
  v = RedsNet(cfg).init(key, jnp.zeros((1, *input_shape), jnp.float32), train=False)
  return {"params": v["params"], "batch_stats": v.get("batch_stats", {})}


def param_count(cfg: ModelConfig, input_shape, *, include_bn: bool = True) -> int:
  """Number of parameters (BN scale/bias counted unless include_bn=False; stats never)."""
  shapes = jax.eval_shape(lambda k: init_variables(cfg, k, input_shape), jax.random.key(0))
  total = 0
  for mod, leaves in shapes["params"].items():
    if not include_bn and "bn" in mod:
      continue
    total += sum(math.prod(a.shape) for a in jax.tree_util.tree_leaves(leaves))
  return int(total)


def _out(n: int, s: int) -> int:
  return -(-n // s)  # SAME padding


@dataclasses.dataclass(frozen=True)
class ChainCosts:
  """The model's MACs as a chain: sum_l pair[l] w_(l-1) w_l + unit[l] w_l + const.

  Attributes:
    pair, unit: per prunable layer.
    const: MACs independent of the widths.
    in_width: w_0 (input channels or features).
    act_bytes: float32 bytes of the largest activation map per unit of each layer.
    fixed_act_bytes: bytes of activation maps independent of the widths (input, FC).
  """

  pair: tuple[float, ...]
  unit: tuple[float, ...]
  const: float
  in_width: int
  act_bytes: tuple[float, ...]
  fixed_act_bytes: float

  def chain_macs(self, widths) -> float:
    total, prev = 0.0, self.in_width
    for w, p, u in zip(widths, self.pair, self.unit, strict=True):
      total += p * prev * w + u * w
      prev = w
    return total

  def macs(self, widths) -> float:
    """Total MACs of the subnetwork (convolutions, depthwise, dense layers)."""
    return self.chain_macs(widths) + self.const

  def peak_act_bytes(self, widths) -> float:
    """Largest single float32 activation map (the digest's peak-memory definition)."""
    return max([self.fixed_act_bytes] + [a * w for a, w in zip(self.act_bytes, widths, strict=True)])


def chain_costs(cfg: ModelConfig, input_shape) -> ChainCosts:
  """Counts MACs per layer from the architecture (SAME padding, biases and BN excluded)."""
  h, w, cin = input_shape
  L, k = len(cfg.widths), cfg.num_classes
  in_bytes = 4.0 * h * w * cin
  if cfg.kind == "dnn":
    return ChainCosts((1.0,) * L, (0.0,) * (L - 1) + (float(k),), 0.0, h * w * cin, (4.0,) * L, in_bytes)
  kh, kw = cfg.first_kernel
  h0, w0 = _out(h, cfg.first_stride[0]), _out(w, cfg.first_stride[1])
  if cfg.kind == "cnn":
    h1, w1 = _out(h0, cfg.second_stride[0]), _out(w0, cfg.second_stride[1])
    sh, sw = cfg.second_kernel
    pair = (float(kh * kw * h0 * w0), float(sh * sw * h1 * w1))
    unit = (0.0, float(h1 * w1 * cfg.bottleneck))
    const = float(cfg.bottleneck * cfg.hidden + cfg.hidden * k)
    return ChainCosts(pair, unit, const, cin, (4.0 * h0 * w0, 4.0 * h1 * w1), max(in_bytes, 4.0 * cfg.hidden))
  sizes = [(h0, w0)]
  for s in cfg.dw_strides:
    sizes.append((_out(sizes[-1][0], s), _out(sizes[-1][1], s)))
  pair = [float(kh * kw * h0 * w0)] + [float(a * b) for a, b in sizes[1:]]
  unit, act = [], []
  for i in range(L):
    here = sizes[i][0] * sizes[i][1]
    if i + 1 < L:
      nxt = sizes[i + 1][0] * sizes[i + 1][1]
      unit.append(float(9 * nxt))  # the depthwise channel of block i+1 that consumes this unit
      act.append(4.0 * max(here, nxt))
    else:
      unit.append(float(k))  # the head's row for this unit
      act.append(4.0 * here)
  return ChainCosts(tuple(pair), tuple(unit), 0.0, cin, tuple(act), in_bytes)
