"""Flax Linen AnyNet: ResNet (basic, bottleneck), RegNetX (group conv), EfficientNet (MBConv),
single-branch or stretched.

A stretched stage runs one branch per processor, each a full, shorter and narrower
copy of the stage with its own stride-2 first block, on the same stage input;
the branch outputs are concatenated on channels (NN-Stretch §1.3). With MB_VER 1
each branch starts with a 1x1 conv + BN to `make_divisible(w / o * prev_w, 8)`
channels and, when branched, ends with a 1x1 conv + BN to `o // n` channels.

Every layer's module name carries the artifact's tags (`st_cpu_conv`,
`s2_dsp_b1_b_conv`, `s1_cpu_mp_start_mp_end_concat`, `head_cpu_dense`): the
same names `branching.flops.ops` produces, and the names the exported TFLite
ops carry (see `branching.export`).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from branching.flops import make_divisible
from branching.network import NetConfig
from common.batchnorm import BatchNorm
from common.models import count_params as param_count  # noqa: F401 - the package's counter


def _relu(x):
  # jnp.maximum rather than nn.relu (a custom_jvp), so that jax2tf keeps the layer's name scope on
  # the fused op and the TFLite tensor name starts with the device tag.
  return jnp.maximum(x, 0.0)


def _silu(x):
  return x * jax.nn.sigmoid(x)


_ACTS = {"relu": _relu, "silu": _silu}


class ConvBN(nn.Module):
  """k x k conv (no bias) + batch norm + optional activation, as pycls builds it."""

  features: int
  kernel: int = 1
  stride: int = 1
  groups: int = 1
  act: str | None = None

  @nn.compact
  def __call__(self, x, *, train: bool):
    p = self.kernel // 2
    x = nn.Conv(
      self.features,
      (self.kernel, self.kernel),
      strides=self.stride,
      padding=((p, p), (p, p)),
      feature_group_count=self.groups,
      use_bias=False,
      name="conv",
    )(x)
    x = BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name="bn")(x)
    return _ACTS[self.act](x) if self.act else x


class SE(nn.Module):
  """Squeeze-and-excitation: GAP, 1x1 conv + act, 1x1 conv + sigmoid, scale."""

  w_se: int
  act: str

  @nn.compact
  def __call__(self, x):
    s = jnp.mean(x, axis=(1, 2), keepdims=True)
    s = _ACTS[self.act](nn.Conv(self.w_se, (1, 1), name="conv1")(s))
    s = nn.sigmoid(nn.Conv(x.shape[-1], (1, 1), name="conv2")(s))
    return x * s


class Block(nn.Module):
  """One residual bottleneck, basic or MBConv block; layer names prefixed with `prefix`."""

  block_type: str
  prefix: str
  w_out: int
  stride: int
  bot_mul: float
  group_w: int
  kernel: int
  act: str
  se_r: float = 0.0
  fork: bool = False  # the block's last op feeds a fork: tag it `mp_start`

  @nn.compact
  def __call__(self, x, *, train: bool):
    p, w_in = self.prefix, x.shape[-1]
    if self.block_type == "mbconv":
      w_exp = int(w_in * self.bot_mul)
      y = x
      if w_exp != w_in:
        y = ConvBN(w_exp, 1, act=self.act, name=f"{p}_exp_conv")(y, train=train)
      y = ConvBN(w_exp, self.kernel, self.stride, groups=w_exp, act=self.act, name=f"{p}_dw")(y, train=train)
      if self.se_r:
        y = SE(int(w_in * self.se_r), self.act, name=f"{p}_se")(y)
      if not (self.stride == 1 and w_in == self.w_out):
        return ConvBN(self.w_out, 1, name=f"{p}{'_mp_start' if self.fork else ''}_lin_conv")(y, train=train)
      y = ConvBN(self.w_out, 1, name=f"{p}_lin_conv")(y, train=train)
      with jax.named_scope(f"{p}{'_mp_start' if self.fork else ''}_add"):
        return x + y
    if self.block_type == "res_bottleneck_block":
      w_b = int(round(self.w_out * self.bot_mul))
      y = ConvBN(w_b, 1, act=self.act, name=f"{p}_a_conv")(x, train=train)
      y = ConvBN(w_b, 3, self.stride, groups=w_b // self.group_w, act=self.act, name=f"{p}_b_conv")(
        y, train=train
      )
      y = ConvBN(self.w_out, 1, name=f"{p}_c_conv")(y, train=train)
    else:
      y = ConvBN(self.w_out, 3, self.stride, act=self.act, name=f"{p}_a_conv")(x, train=train)
      y = ConvBN(self.w_out, 3, name=f"{p}_b_conv")(y, train=train)
    if w_in != self.w_out or self.stride != 1:
      x = ConvBN(self.w_out, 1, self.stride, name=f"{p}_proj_conv")(x, train=train)
    with jax.named_scope(f"{p}{'_mp_start' if self.fork else ''}_add"):
      return _ACTS[self.act](x + y)


class AnyNet(nn.Module):
  """The (multi-branch) AnyNet of a `NetConfig`; `__call__(x, *, train) -> (logits, aux)`.

  aux holds `stage_outputs` (the merged output of every stage) and
  `branch_outputs` (per stage, the list of branch outputs before the concat).
  """

  config: NetConfig

  def branch_fn(self, i: int, j: int, x, *, train: bool):
    """Runs branch j of stage i on the stage input x (also used for per-branch export)."""
    c = self.config
    st, b = c.stages[i], c.stages[i].branches[j]
    n = len(c.stages)
    pre = f"s{i + 1}_{b.device}"
    prev_w = x.shape[-1]
    if c.mb_ver == 1:
      w_in = make_divisible(b.width / st.original_width * prev_w, 8)
      x = ConvBN(w_in, 1, name=f"{pre}_convfirst")(x, train=train)
    fork_next = i + 1 < n and c.stages[i + 1].branched
    for k in range(b.depth):
      last = k == b.depth - 1 and not st.branched and fork_next
      x = Block(
        c.block_type,
        f"{pre}_b{k + 1}",
        b.width,
        b.stride if k == 0 else 1,
        b.bot_mul,
        b.group_w,
        st.kernel,
        b.activation,
        c.se_r if c.se_on else 0.0,
        fork=last,
        name=f"{pre}_b{k + 1}",
      )(x, train=train)
    if c.mb_ver == 1 and st.branched and b.width != st.original_width // len(st.branches):
      x = ConvBN(st.original_width // len(st.branches), 1, name=f"{pre}_convlast")(x, train=train)
    return x

  @nn.compact
  def __call__(self, x, *, train: bool, part: tuple = ()):
    """Runs the network, or one `part` of it (what per-branch export uses).

    part: () the whole network; ("stem",); ("branch", i, j) branch j of stage i
    on the stage input x; ("head",) the head on the last stage's output.
    """
    if part and part[0] == "branch":
      return self.branch_fn(part[1], part[2], x, train=train)
    if part and part[0] == "head":
      return self._head(x, train=train)
    c = self.config
    act = c.activation
    sd, n = c.stem_device, len(c.stages)
    fork0 = n > 0 and c.stages[0].branched
    mp = "_mp_start" if fork0 else ""
    if c.stem_type == "res_stem_in":
      x = ConvBN(c.stem_w, c.stem_k, 2, act=act, name=f"st_{sd}_conv")(x, train=train)
      with jax.named_scope(f"st_{sd}{mp}_pool"):
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    else:
      x = ConvBN(c.stem_w, c.stem_k, 2, act=act, name=f"st_{sd}{mp}_conv")(x, train=train)
    if part and part[0] == "stem":
      return x
    stage_outs, branch_outs = [], []
    for i, st in enumerate(c.stages):
      outs = [self.branch_fn(i, j, x, train=train) for j in range(len(st.branches))]
      branch_outs.append(outs)
      x = self.merge(i, outs)
      stage_outs.append(x)
    logits = self._head(x, train=train)
    return logits, {"stage_outputs": stage_outs, "branch_outputs": branch_outs}

  def merge(self, i: int, outs):
    """The stage-end concat (tagged mp_end, and mp_start when the next stage forks again)."""
    c = self.config
    if len(outs) == 1:
      return outs[0]
    fork_next = i + 1 < len(c.stages) and c.stages[i + 1].branched
    with jax.named_scope(f"s{i + 1}_{c.merge_device}{'_mp_start' if fork_next else ''}_mp_end_concat"):
      return jnp.concatenate(outs, axis=-1)

  def _head(self, x, *, train: bool):
    c = self.config
    hd = c.head_device
    if c.head_w:
      x = ConvBN(c.head_w, 1, act=c.activation, name=f"head_{hd}_conv")(x, train=train)
    with jax.named_scope(f"head_{hd}_gap"):
      x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(c.num_classes, name=f"head_{hd}_dense")(x)
