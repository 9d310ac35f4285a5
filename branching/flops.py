"""MACs and parameters of a (multi-branch) AnyNet, counted the way pycls counts them.

pycls rules (`pycls/models/blocks.py: *_cx`): a k x k conv of stride s maps h to
(h - 1) // s + 1 and costs k*k*w_in*w_out*h_out*w_out_sp / groups MACs (+ w_out with
a bias); batch norm adds 2*w parameters and no MACs; activations, adds, pools and
concats cost nothing; the FC head costs w_in*classes (+ classes bias).

`ops(config, image_size)` walks the network once and returns one `Op` per
(TFLite-fused) layer with its tagged name, kind, MACs, parameters, activation
bytes and device; `count` sums it. Two places where pycls's `AnyNet.complexity`
prints something other than what the model runs, so `count` reports both (`macs`,
`params` = what the model runs; `pycls_macs`, `pycls_params` = what pycls prints):

- With MB_VER 1, the 1x1 projection that brings each branch to o // n channels
  before the concat runs in the model but pycls leaves it out.
- pycls takes the next stage's input width (and the head's) from ORIGINAL_WIDTHS
  (`prev_w = o`), not from the concat. Three published configs state an o_i that
  is not the sum of their MB_VER-2 branch widths: RX-1.6-CDG (stages 3 and 4:
  624 vs 696, 1872 vs 1896), RX-4-CDG (stage 4) and the EN-B5 baselines (stage 5).
  The graph the artifact deploys (its Keras constructor infers input channels)
  reads the concat, as this model does; the PyTorch constructor declares o_i
  input channels and cannot run those configs. `ops(..., pycls_widths=True)`
  walks the network with pycls's widths.
"""

from __future__ import annotations

import dataclasses

from branching.network import NetConfig
from common.mobilenet import make_divisible

KINDS = ("conv", "dwconv", "gconv", "fc", "elem")


@dataclasses.dataclass(frozen=True)
class Op:
  """One layer as the runtime sees it (conv + BN + activation fused).

  Attributes:
    name: tagged name, e.g. `s2_dsp_b0_b_conv` or `s1_cpu_mp_start_mp_end_concat`.
    kind: one of KINDS (conv, depthwise conv, grouped conv, fully connected, element-wise).
    macs: multiply-accumulates (pycls rules).
    params: parameters, including batch-norm scale/shift (pycls rules).
    act_in: input activation elements; act_out: output activation elements.
    device: processor tag.
    stage: -1 for the stem, len(stages) for the head, else the stage index.
    branch: branch index within a branched stage, -1 otherwise (stem, head, merge).
    pycls: whether pycls's complexity() counts it.
    groups: conv groups (a grouped conv is split into `groups` convs by the artifact).
    pixels: output pixels of a conv (h * w), 0 for other ops.
  """

  name: str
  kind: str
  macs: int
  params: int
  act_in: int
  act_out: int
  device: str
  stage: int
  branch: int
  pycls: bool = True
  groups: int = 1
  pixels: int = 0


class Walker:
  """Tracks (h, w) and appends ops; one instance per network walk."""

  def __init__(self, hw: int):
    self.h = self.w = hw
    self.ops: list[Op] = []

  def conv(self, name, w_in, w_out, k, *, stride=1, groups=1, bias=False, bn=True, **tag) -> None:
    h0, w0 = self.h, self.w
    self.h, self.w = (self.h - 1) // stride + 1, (self.w - 1) // stride + 1
    macs = k * k * w_in * w_out * self.h * self.w // groups + (w_out if bias else 0)
    params = k * k * w_in * w_out // groups + (w_out if bias else 0) + (2 * w_out if bn else 0)
    if groups == 1:
      kind = "conv"
    elif groups == w_in == w_out:
      kind = "dwconv"
    else:
      kind = "gconv"
    self.ops.append(
      Op(
        name,
        kind,
        macs,
        params,
        h0 * w0 * w_in,
        self.h * self.w * w_out,
        groups=groups,
        pixels=self.h * self.w,
        **tag,
      )
    )

  def elem(self, name, c_in, c_out, *, stride=1, **tag) -> None:
    a_in = self.h * self.w * c_in
    self.h, self.w = (self.h - 1) // stride + 1, (self.w - 1) // stride + 1
    self.ops.append(Op(name, "elem", 0, 0, a_in, self.h * self.w * c_out, **tag))

  def fc(self, name, w_in, w_out, **tag) -> None:
    self.ops.append(Op(name, "fc", w_in * w_out + w_out, w_in * w_out + w_out, w_in, w_out, **tag))


def block(
  wk: Walker,
  c: NetConfig,
  p: str,
  b,
  w_in: int,
  w_out: int,
  stride: int,
  kernel: int,
  tag,
  fork: bool = False,
) -> None:
  """One residual / MBConv block named with prefix p = s{i}_{dev}_b{k}; `fork` tags its last op mp_start."""
  mp = "_mp_start" if fork else ""
  if c.block_type == "res_bottleneck_block":
    w_b = int(round(w_out * b.bot_mul))
    groups = w_b // b.group_w
    h, w = wk.h, wk.w
    wk.conv(f"{p}_a_conv", w_in, w_b, 1, **tag)
    wk.conv(f"{p}_b_conv", w_b, w_b, 3, stride=stride, groups=groups, **tag)
    wk.conv(f"{p}_c_conv", w_b, w_out, 1, **tag)
    _skip(wk, p, w_in, w_out, stride, h, w, tag, mp)
  elif c.block_type == "res_basic_block":
    h, w = wk.h, wk.w
    wk.conv(f"{p}_a_conv", w_in, w_out, 3, stride=stride, **tag)
    wk.conv(f"{p}_b_conv", w_out, w_out, 3, **tag)
    _skip(wk, p, w_in, w_out, stride, h, w, tag, mp)
  else:  # mbconv
    w_exp = int(w_in * b.bot_mul)
    if w_exp != w_in:
      wk.conv(f"{p}_exp_conv", w_in, w_exp, 1, **tag)
    wk.conv(f"{p}_dw", w_exp, w_exp, kernel, stride=stride, groups=w_exp, **tag)
    if c.se_on:
      h, w = wk.h, wk.w
      w_se = int(w_in * c.se_r)
      wk.elem(f"{p}_se_gap", w_exp, w_exp, **tag)
      wk.h = wk.w = 1
      wk.conv(f"{p}_se_conv1", w_exp, w_se, 1, bias=True, bn=False, **tag)
      wk.conv(f"{p}_se_conv2", w_se, w_exp, 1, bias=True, bn=False, **tag)
      wk.h, wk.w = h, w
      wk.elem(f"{p}_se_mul", w_exp, w_exp, **tag)
    res = stride == 1 and w_in == w_out
    wk.conv(f"{p}{'' if res else mp}_lin_conv", w_exp, w_out, 1, **tag)
    if res:
      wk.elem(f"{p}{mp}_add", w_out, w_out, **tag)


def _skip(wk, p, w_in, w_out, stride, h, w, tag, mp="") -> None:
  if w_in != w_out or stride != 1:
    h1, w1 = wk.h, wk.w
    wk.h, wk.w = h, w
    wk.conv(f"{p}_proj_conv", w_in, w_out, 1, stride=stride, **tag)
    wk.h, wk.w = h1, w1
  wk.elem(f"{p}{mp}_add", w_out, w_out, **tag)


def ops(c: NetConfig, image_size: int = 224, *, pycls_widths: bool = False) -> list[Op]:
  """Every layer of the network in execution order, with tags, MACs and sizes.

  pycls_widths: take each stage's output width from ORIGINAL_WIDTHS, as pycls's
  complexity count does, instead of the width the concat produces.
  """
  wk = Walker(image_size)
  n = len(c.stages)
  sd = c.stem_device
  fork0 = n > 0 and c.stages[0].branched
  stem_tag = {"device": sd, "stage": -1, "branch": -1}
  if c.stem_type == "res_stem_in":
    wk.conv(f"st_{sd}_conv", 3, c.stem_w, c.stem_k, stride=2, **stem_tag)
    wk.elem(f"st_{sd}{'_mp_start' if fork0 else ''}_pool", c.stem_w, c.stem_w, stride=2, **stem_tag)
  else:
    wk.conv(f"st_{sd}{'_mp_start' if fork0 else ''}_conv", 3, c.stem_w, c.stem_k, stride=2, **stem_tag)
  prev_w = c.stem_w
  for i, st in enumerate(c.stages):
    nb = len(st.branches)
    h0, w0 = wk.h, wk.w
    fork_next = i + 1 < n and c.stages[i + 1].branched
    outs = []
    for j, b in enumerate(st.branches):
      wk.h, wk.w = h0, w0
      tag = {"device": b.device, "stage": i, "branch": j if st.branched else -1}
      pre = f"s{i + 1}_{b.device}"
      w_in = prev_w
      if c.mb_ver == 1:
        w_in = make_divisible(b.width / st.original_width * prev_w, 8)
        wk.conv(f"{pre}_convfirst", prev_w, w_in, 1, **tag)
      for k in range(b.depth):
        stride = b.stride if k == 0 else 1
        last = k == b.depth - 1 and not st.branched and fork_next
        p = f"{pre}_b{k + 1}"
        block(wk, c, p, b, w_in if k == 0 else b.width, b.width, stride, st.kernel, tag, fork=last)
      w_o = b.width
      if c.mb_ver == 1 and st.branched and b.width != st.original_width // nb:
        w_o = st.original_width // nb
        wk.conv(f"{pre}_convlast", b.width, w_o, 1, bn=True, pycls=False, **tag)
      outs.append(w_o)
    if st.branched:
      md = c.merge_device
      name = f"s{i + 1}_{md}{'_mp_start' if fork_next else ''}_mp_end_concat"
      wk.elem(name, sum(outs), sum(outs), device=md, stage=i, branch=-1)
    if pycls_widths:
      prev_w = st.original_width
    else:
      prev_w = sum(outs) if (c.mb_ver == 2 or st.branched) else c.stage_out_width(i)
  hd = c.head_device
  head_tag = {"device": hd, "stage": n, "branch": -1}
  if c.head_w:
    wk.conv(f"head_{hd}_conv", prev_w, c.head_w, 1, **head_tag)
    prev_w = c.head_w
  wk.elem(f"head_{hd}_gap", prev_w, prev_w, **head_tag)
  wk.h = wk.w = 1
  wk.fc(f"head_{hd}_dense", prev_w, c.num_classes, **head_tag)
  return wk.ops


def count(c: NetConfig, image_size: int = 224) -> dict[str, int]:
  """{"macs", "params"} the model runs, and {"pycls_macs", "pycls_params"} as pycls reports."""
  all_ops = ops(c, image_size)
  pycls_ops = ops(c, image_size, pycls_widths=True)
  return {
    "macs": sum(o.macs for o in all_ops),
    "params": sum(o.params for o in all_ops),
    "pycls_macs": sum(o.macs for o in pycls_ops if o.pycls),
    "pycls_params": sum(o.params for o in pycls_ops if o.pycls),
  }


def stage_macs(c: NetConfig, image_size: int = 224) -> list[list[int]]:
  """MACs per stage and branch."""
  out = [[0] * len(st.branches) for st in c.stages]
  for o in ops(c, image_size):
    if 0 <= o.stage < len(c.stages):
      out[o.stage][max(o.branch, 0)] += o.macs
  return out
