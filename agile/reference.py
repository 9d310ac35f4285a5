"""The reference network ("evaluator") whose input gradients define feature importance.

The original fine-tunes an ImageNet EfficientNetV2-S and, at AgileNN time, cuts
its stem so that the body reads the 24-channel feature map of AgileNN's feature
extractor. Pretrained weights cannot be downloaded here, so `agile` trains its
own reference network from scratch: a stem (3x3 conv to 24 channels, BN, swish,
with the feature extractor's stride) followed by an EfficientNetV2-style body of
fused-MBConv / MBConv blocks, a 1x1 top conv, pooling, dropout and a dense head.
`EFFNETV2_S_BLOCKS` is the EfficientNetV2-S body (for GPU users); `SMALL_BLOCKS`
trains on a CPU in minutes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from common.batchnorm import BatchNorm
from common.mobilenet import DepthwiseConv

# (block type, expansion, kernel, stride, out channels, repeats, SE ratio) after the stem.
EFFNETV2_S_BLOCKS: tuple[tuple[str, int, int, int, int, int, float], ...] = (
  ("fused", 1, 3, 1, 24, 2, 0.0),
  ("fused", 4, 3, 2, 48, 4, 0.0),
  ("fused", 4, 3, 2, 64, 4, 0.0),
  ("mbconv", 4, 3, 2, 128, 6, 0.25),
  ("mbconv", 6, 3, 1, 160, 9, 0.25),
  ("mbconv", 6, 3, 2, 256, 15, 0.25),
)
SMALL_BLOCKS: tuple[tuple[str, int, int, int, int, int, float], ...] = (
  ("fused", 1, 3, 1, 24, 1, 0.0),
  ("fused", 4, 3, 2, 32, 1, 0.0),
  ("mbconv", 4, 3, 2, 48, 1, 0.25),
)
# The unit tests' one-block body (agile/configs/quick.py:tiny).
TINY_BLOCKS: tuple[tuple[str, int, int, int, int, int, float], ...] = (("mbconv", 2, 3, 2, 8, 1, 0.25),)
# config.reference.blocks -> body
BLOCKS = {"small": SMALL_BLOCKS, "effnetv2_s": EFFNETV2_S_BLOCKS, "tiny": TINY_BLOCKS}
KERNEL_INIT = nn.initializers.variance_scaling(2.0, "fan_out", "truncated_normal")


@dataclasses.dataclass(frozen=True)
class ReferenceConfig:
  """Architecture of the reference network.

  Attributes:
    num_classes: classes.
    stem_channels: stem width; must equal the feature extractor's channels (24).
    stem_stride: stride of the stem (the feature extractor's stride).
    blocks: (type, expansion, kernel, stride, out, repeats, se_ratio) rows.
    top_channels: width of the final 1x1 conv (1280 in EfficientNetV2-S).
    dropout: before the dense head (0.5 in the original).
    bn_momentum: BatchNorm momentum (0.9 in the Keras EfficientNetV2).
  """

  num_classes: int = 10
  stem_channels: int = 24
  stem_stride: int = 3
  blocks: tuple[tuple[str, int, int, int, int, int, float], ...] = SMALL_BLOCKS
  top_channels: int = 128
  dropout: float = 0.5
  bn_momentum: float = 0.9


def _bn(train: bool, momentum: float, name: str) -> nn.BatchNorm:
  return BatchNorm(not train, momentum=momentum, epsilon=1e-3, name=name)


class SqueezeExcite(nn.Module):
  squeeze: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    s = x.mean(axis=(1, 2), keepdims=True)
    s = nn.silu(nn.Conv(self.squeeze, (1, 1), kernel_init=KERNEL_INIT, name="reduce")(s))
    s = nn.sigmoid(nn.Conv(x.shape[-1], (1, 1), kernel_init=KERNEL_INIT, name="expand")(s))
    return x * s


class FusedMBConv(nn.Module):
  """EfficientNetV2 fused block: 3x3 conv (expand) -> [1x1 project] with a residual."""

  out_channels: int
  expansion: int
  kernel: int
  stride: int
  bn_momentum: float = 0.9

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    cin = x.shape[-1]
    hidden = cin * self.expansion
    k = (self.kernel, self.kernel)
    if self.expansion != 1:
      h = nn.Conv(hidden, k, self.stride, "SAME", use_bias=False, kernel_init=KERNEL_INIT, name="expand")(x)
      h = nn.silu(_bn(train, self.bn_momentum, "expand_bn")(h))
      h = nn.Conv(self.out_channels, (1, 1), use_bias=False, kernel_init=KERNEL_INIT, name="project")(h)
      h = _bn(train, self.bn_momentum, "project_bn")(h)
    else:
      h = nn.Conv(
        self.out_channels, k, self.stride, "SAME", use_bias=False, kernel_init=KERNEL_INIT, name="project"
      )(x)
      h = nn.silu(_bn(train, self.bn_momentum, "project_bn")(h))
    if self.stride == 1 and cin == self.out_channels:
      h = h + x
    return h


class MBConv(nn.Module):
  """EfficientNetV2 MBConv: 1x1 expand -> depthwise -> SE -> 1x1 project, residual."""

  out_channels: int
  expansion: int
  kernel: int
  stride: int
  se_ratio: float
  bn_momentum: float = 0.9

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    cin = x.shape[-1]
    hidden = cin * self.expansion
    h = x
    if self.expansion != 1:
      h = nn.Conv(hidden, (1, 1), use_bias=False, kernel_init=KERNEL_INIT, name="expand")(h)
      h = nn.silu(_bn(train, self.bn_momentum, "expand_bn")(h))
    h = DepthwiseConv(self.kernel, self.stride, kernel_init=KERNEL_INIT, name="dw")(h)
    h = nn.silu(_bn(train, self.bn_momentum, "dw_bn")(h))
    if self.se_ratio > 0:
      h = SqueezeExcite(max(1, int(cin * self.se_ratio)), name="se")(h)
    h = nn.Conv(self.out_channels, (1, 1), use_bias=False, kernel_init=KERNEL_INIT, name="project")(h)
    h = _bn(train, self.bn_momentum, "project_bn")(h)
    if self.stride == 1 and cin == self.out_channels:
      h = h + x
    return h


class ReferenceStem(nn.Module):
  """3x3 conv to `channels` with `stride`, BN, swish (cut off at AgileNN time)."""

  channels: int = 24
  stride: int = 3
  bn_momentum: float = 0.9

  @nn.compact
  def __call__(self, x_BHWC: jax.Array, *, train: bool) -> jax.Array:
    x = nn.Conv(
      self.channels, (3, 3), self.stride, "SAME", use_bias=False, kernel_init=KERNEL_INIT, name="conv"
    )(x_BHWC)
    return nn.silu(_bn(train, self.bn_momentum, "bn")(x))


class ReferenceBody(nn.Module):
  """Everything after the stem: blocks, top conv, GAP, dropout, dense. Reads [B, h, w, 24]."""

  num_classes: int
  blocks: Sequence[tuple[str, int, int, int, int, int, float]] = SMALL_BLOCKS
  top_channels: int = 128
  dropout: float = 0.5
  bn_momentum: float = 0.9

  @nn.compact
  def __call__(self, f_BHWC: jax.Array, *, train: bool) -> jax.Array:
    x = f_BHWC
    i = 0
    for kind, t, k, s, c, n, se in self.blocks:
      for j in range(n):
        stride = s if j == 0 else 1
        if kind == "fused":
          x = FusedMBConv(c, t, k, stride, self.bn_momentum, name=f"block{i}")(x, train=train)
        else:
          x = MBConv(c, t, k, stride, se, self.bn_momentum, name=f"block{i}")(x, train=train)
        i += 1
    x = nn.Conv(self.top_channels, (1, 1), use_bias=False, kernel_init=KERNEL_INIT, name="top_conv")(x)
    x = nn.silu(_bn(train, self.bn_momentum, "top_bn")(x))
    x = nn.Dropout(self.dropout, deterministic=not train)(x.mean(axis=(1, 2)))
    return nn.Dense(self.num_classes, name="head")(x)


class ReferenceNet(nn.Module):
  """Stem + body; `__call__(x, train=) -> (logits, aux)` like every classifier here."""

  config: ReferenceConfig

  def setup(self):
    c = self.config
    self.stem = ReferenceStem(c.stem_channels, c.stem_stride, c.bn_momentum)
    self.body = ReferenceBody(c.num_classes, c.blocks, c.top_channels, c.dropout, c.bn_momentum)

  def __call__(self, x_BHWC: jax.Array, *, train: bool) -> tuple[jax.Array, dict]:
    f = self.stem(x_BHWC, train=train)
    return self.body(f, train=train), {"features": f}


def body_module(config: ReferenceConfig) -> ReferenceBody:
  """The stem-less body as a standalone module (its variables are `variables[...]["body"]`)."""
  return ReferenceBody(
    config.num_classes, config.blocks, config.top_channels, config.dropout, config.bn_momentum
  )


def body_variables(variables: dict) -> dict:
  """The body's part of a ReferenceNet's {"params", "batch_stats"}: the stem is cut."""
  return {col: tree["body"] for col, tree in variables.items() if "body" in tree}


def make_evaluator(config: ReferenceConfig):
  """The frozen evaluator (the stem-less body) as functions of the features.

  Returns (logits_fn(body_vars, f_BHWC) -> logits, loss_fn(body_vars, f_BHWC, labels_B)
  -> mean true-class cross-entropy). The body runs in inference mode (BN on
  running statistics, no dropout) and `body_vars` (from `body_variables`) are
  held constant: no gradient reaches them.
  """
  body = body_module(config)

  def logits_fn(body_vars: dict, f_BHWC: jax.Array) -> jax.Array:
    v = {col: body_vars[col] for col in ("params", "batch_stats") if col in body_vars}
    return body.apply(jax.lax.stop_gradient(v), f_BHWC, train=False)

  def loss_fn(body_vars: dict, f_BHWC: jax.Array, labels_B: jax.Array) -> jax.Array:
    logp = jax.nn.log_softmax(logits_fn(body_vars, f_BHWC))
    return -jnp.take_along_axis(logp, labels_B[:, None], axis=-1).mean()

  return logits_fn, loss_fn


BASELINE_KEY = "ig_baseline_grad"


def with_baseline_gradients(config: ReferenceConfig, body_vars: dict, feature_shape_HWC) -> dict:
  """`body_vars` plus the table of IG baseline gradients, [num_classes, h, w, C], under BASELINE_KEY.

  Row c is the gradient, at the all-zero feature map, of one example's CE of
  class c under the frozen evaluator. In inference mode the examples of a batch
  do not interact, so for labels y_B the gradient of the batch's mean CE at the
  zero baseline is table[y_b] / B: the same numbers integrated gradients would
  compute at alpha = 0 every step, computed once per class for the whole
  training (exact while the evaluator is frozen and the baseline is zero).
  """
  logits_fn, _ = make_evaluator(config)
  n = config.num_classes

  def total(f):
    logp = jax.nn.log_softmax(logits_fn(body_vars, f))
    return -jnp.take_along_axis(logp, jnp.arange(n)[:, None], axis=-1).sum()

  dtype = jax.tree.leaves(body_vars["params"])[0].dtype
  table = jax.jit(jax.grad(total))(jnp.zeros((n, *feature_shape_HWC), dtype))
  return {**body_vars, BASELINE_KEY: table}


def baseline_gradient(body_vars: dict, labels_B: jax.Array) -> jax.Array | None:
  """grad_f mean_b CE(f = 0, y_b) from the table of `with_baseline_gradients`; None without one."""
  table = body_vars.get(BASELINE_KEY)
  if table is None:
    return None
  return table[labels_B] / labels_B.shape[0]
