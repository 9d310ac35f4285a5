"""AgileNN training-step speed: `python -m launch.bench agile [--reference effnetv2_s] [--batch 64]`.

Times one jitted training step of the paper architecture (96x96 input, feature
extractor stride 3 -> 32x32x24, the full MobileNetV2 remote predictor, the
EfficientNetV2-S-shaped evaluator, 100 classes, batch 64) in several variants,
all in this one process:

  reference      the step before the speed work: grouped depthwise convs in the
                 remote predictor, the IG baseline gradient computed every step,
                 XLA:CPU's default options, autodiff's reductions (flax's BatchNorm)
  shifted        + shifted depthwise convs (`common.mobilenet.DepthwiseConv`)
  shifted_flags  + the launchers' XLA:CPU options (`common.xla_cpu.CPU_OPTIONS`)
  fast_autodiff_reductions  + the IG baseline gradients from the per-class table
                 (the fast step before the multi-output reductions: the depthwise filter
                 gradient, `common.mobilenet`, and BatchNorm, `common.batchnorm`)
  fast_conv_filter_gradients  + the multi-output reductions (the fast step before the
                 remote predictor's 1x1 filter gradients became matmuls)
  fast           + the 1x1 filter gradients as matmuls (`common.mobilenet.PointwiseConv`);
                 what training runs
  fast_ynn_reduce  fast under `REDUCE_OPTIONS` (YNN's reductions kept)
  fast_remat     fast with the IG gradients rematerialised (`make_train_step(remat=True)`)

and the same step without the XAI terms (CE only: no evaluator, no
grad-of-grad) as reference, fast_autodiff_reductions, fast and fast_ynn_reduce.
Autodiff's reductions are traced inside `common.xla_cpu.autodiff_reductions()`. Each variant's XLA FLOP count, its
achieved FLOP/s and that as a fraction of a float32 matmul measured in the same
run (with the fast options) are reported, and the reference / fast ratio.
`--profile` adds the per-op breakdown (`common.profile`) of the reference and
fast full steps. The full steps are compiled first and timed interleaved (one step of each
variant per round). `--memory` measures the peak resident set of chosen variants' full steps,
each in a child process (`launch/benchmarks/agile_memory.py`); `fast_remat` is `fast` with the
IG gradients rematerialised (`agile.train.make_train_step(remat=True)`). `--tf2` (on by default;
`--no-tf2` leaves it out) times the original TF2 step (`launch/benchmarks/agile_tf2.py`: one
`tf.function` without XLA, oneDNN, the same batch, shapes and thread count) in a child process,
interleaved with the JAX steps (one TF2 step, then one step of each variant, per round, after a
warm-up round), and reports its step time (median, min, max), its peak resident set and
`speedup_fast_vs_tf2_same_run` (TF2 median / fast median, both from this run).
"""

from __future__ import annotations

import argparse
import dataclasses

VARIANTS = (
  "reference",
  "shifted",
  "shifted_flags",
  "fast_autodiff_reductions",
  "fast",
  "fast_ynn_reduce",
  "fast_remat",
  "fast_conv_filter_gradients",
)


def add_args(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--input_size", type=int, default=96)
  parser.add_argument("--num_classes", type=int, default=100)
  parser.add_argument("--reference", choices=("effnetv2_s", "small"), default="effnetv2_s")
  parser.add_argument("--ig_steps", type=int, default=2)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--matmul_n", type=int, default=2048)
  parser.add_argument(
    "--variants",
    default="reference,fast_autodiff_reductions,fast,fast_ynn_reduce",
    help=f"comma-separated, from {VARIANTS}",
  )
  parser.add_argument(
    "--profile", action="store_true", help="per-op breakdown of the reference and fast steps"
  )
  parser.add_argument("--ops_only", action="store_true", help="only the single-op timings (seconds)")
  parser.add_argument("--skip_ce", action="store_true", help="leave out the CE-only step's variants")
  parser.add_argument(
    "--memory",
    default="fast,fast_remat",
    help="comma-separated variants whose full step's peak resident set is measured, each in a child "
    "process (launch/benchmarks/agile_memory.py); '' for none",
  )
  parser.add_argument(
    "--tf2",
    action=argparse.BooleanOptionalAction,
    default=True,
    help="time the original TF2 step (a child process) interleaved with the JAX steps; adds `fast`",
  )


def conv_ops(repeats: int) -> dict:
  """Single ops of the evaluator's shapes (batch 64) with XLA:CPU's defaults, CPU_OPTIONS and
  REDUCE_OPTIONS: a 3x3 conv 24 -> 96 at 32x32 (forward, filter and input gradients), a 1x1 conv
  256 -> 1024 at 16x16 (forward, filter gradient), the same 1x1 conv as an einsum, a training
  BatchNorm's statistics (sum and sum of squares over batch and space of 64x32x32x96) as two
  reductions and as `common.batchnorm.channel_sums`' two-output one, the shifted depthwise conv's
  filter gradient at that shape by autodiff and fused, and a 2048^2 matmul. Milliseconds each,
  and GFLOP/s where XLA counts FLOPs (convs, dots)."""
  import jax
  import jax.numpy as jnp

  from common.batchnorm import channel_sums
  from common.mobilenet import depthwise_conv
  from common.timing import measure
  from common.xla_cpu import CPU_OPTIONS, REDUCE_OPTIONS

  conv = lambda x, k: jax.lax.conv_general_dilated(
    x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
  )
  dot = lambda x, k: jnp.einsum("bhwc,cd->bhwd", x, k[0, 0])
  wgrad = lambda f: lambda x, k: jax.grad(lambda k: f(x, k).sum())(k)
  igrad = lambda f: lambda x, k: jax.grad(lambda x: f(x, k).sum())(x)
  bn_stats = lambda x: (x.sum(axis=(0, 1, 2)), jnp.square(x).sum(axis=(0, 1, 2)))
  bn_sums = lambda x: channel_sums(x.shape, x, x * x)
  dw_wgrad = lambda x, k, g: jax.vjp(lambda k: depthwise_conv(x, k, fused_filter_gradient=False), k)[1](g)[0]
  dw_wgrad_fused = lambda x, k, g: jax.vjp(lambda k: depthwise_conv(x, k, fused_filter_gradient=True), k)[1](
    g
  )[0]
  r = lambda i, s: jax.random.normal(jax.random.key(i), s, jnp.float32)
  a3, a1 = (r(0, (64, 32, 32, 24)), r(1, (3, 3, 24, 96))), (r(2, (64, 16, 16, 256)), r(3, (1, 1, 256, 1024)))
  x96 = r(6, (64, 32, 32, 96))
  mm = (r(4, (2048, 2048)), r(5, (2048, 2048)))
  ops = {
    "conv3x3_forward": (conv, a3), "conv3x3_filter_grad": (wgrad(conv), a3), "conv3x3_input_grad": (igrad(conv), a3),
    "conv1x1_forward": (conv, a1), "conv1x1_filter_grad": (wgrad(conv), a1),
    "einsum1x1_forward": (dot, a1), "einsum1x1_filter_grad": (wgrad(dot), a1),
    "batchnorm_statistics": (bn_stats, (x96,)), "batchnorm_statistics_two_output": (bn_sums, (x96,)),
    "depthwise3x3_filter_grad": (dw_wgrad, (x96, r(7, (3, 3, 1, 96)), x96)),
    "depthwise3x3_filter_grad_fused": (dw_wgrad_fused, (x96, r(7, (3, 3, 1, 96)), x96)),
    "matmul2048": (jnp.matmul, mm),
  }  # fmt: skip
  out = {}
  for name, (f, args) in ops.items():
    row = {}
    for label, options in (("default", {}), ("cpu_options", CPU_OPTIONS), ("ynn_reduce", REDUCE_OPTIONS)):
      c = jax.jit(f).lower(*args).compile(options)
      t = measure(lambda c=c, args=args: jax.block_until_ready(c(*args)), repeats=max(repeats, 5), warmup=1)
      row[f"{label}_ms"] = t["min_s"] * 1e3
      flops = _flops(c)
      if flops:
        row[f"{label}_gflops_per_s"] = flops / t["min_s"] / 1e9
    row["speedup_vs_default"] = row["default_ms"] / row["cpu_options_ms"]
    row["ynn_reduce_vs_cpu_options"] = row["cpu_options_ms"] / row["ynn_reduce_ms"]
    out[name] = row
  return out


def _flops(compiled) -> float:
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list | tuple) else cost
  return float(cost.get("flops", 0.0))


def setup(args):
  import jax
  import jax.numpy as jnp
  import numpy as np

  from agile import reference
  from agile import train as agile_train
  from agile.configs import paper
  from agile.data import make_preprocess
  from agile.models import AgileNN, init_variables

  c = paper.get_config()
  c.input_size = args.input_size
  c.reference.blocks = args.reference
  if args.reference == "small":
    c.reference.top_channels = 128
  rcfg = agile_train.reference_config(c, args.num_classes)
  mcfg = agile_train.model_config(c, args.num_classes)
  net = reference.ReferenceNet(rcfg)
  ref_vars = net.init(jax.random.key(1), jnp.zeros((1, args.input_size, args.input_size, 3)), train=False)
  model = AgileNN(mcfg)
  variables = init_variables(model, jax.random.key(0), (args.input_size, args.input_size, 3))
  eval_vars = reference.body_variables(ref_vars)
  rng = np.random.default_rng(0)
  batch = {
    "image": rng.uniform(size=(args.batch, 32, 32, 3)).astype(np.float32),
    "label": rng.integers(0, args.num_classes, args.batch).astype(np.int32),
    "mask": np.ones(args.batch, np.float32),
  }
  return {
    "config": c,
    "rcfg": rcfg,
    "mcfg": mcfg,
    "variables": variables,
    "eval_vars": eval_vars,
    "table_vars": reference.with_baseline_gradients(
      rcfg, eval_vars, agile_train.feature_shape(model, variables, c)
    ),
    "eval_loss": reference.make_evaluator(rcfg)[1],
    "prep": make_preprocess("cifar100", args.input_size),
    "tx": agile_train.sgdw(0.1, 10_000),
    "batch": batch,
    "hp": agile_train.hyperparams(c),
  }


def _variant(name: str) -> tuple[bool, dict, bool, bool, bool, bool]:
  """(shifted depthwise, XLA:CPU compiler options, baseline table, autodiff's reductions, the IG
  gradients rematerialised, the remote predictor's 1x1 filter gradients as matmuls) of a variant."""
  from common.xla_cpu import CPU_OPTIONS, REDUCE_OPTIONS

  return {
    "reference": (False, {}, False, True, False, False),
    "shifted": (True, {}, False, True, False, False),
    "shifted_flags": (True, CPU_OPTIONS, False, True, False, False),
    "fast_autodiff_reductions": (True, CPU_OPTIONS, True, True, False, False),
    "fast_conv_filter_gradients": (True, CPU_OPTIONS, True, False, False, False),
    "fast": (True, CPU_OPTIONS, True, False, False, True),
    "fast_ynn_reduce": (True, REDUCE_OPTIONS, True, False, False, True),
    "fast_remat": (True, CPU_OPTIONS, True, False, True, True),
  }[name]


def full_step(s: dict, name: str, args):
  """(compiled step, its arguments after the state) of variant `name`."""
  import jax
  import jax.numpy as jnp

  from agile import train as agile_train
  from agile.models import AgileNN
  from common import train as train_lib
  from common.mobilenet import count_grouped_convs
  from common.xla_cpu import autodiff_reductions

  shifted, options, table, autodiff, remat, dot = _variant(name)
  model = AgileNN(dataclasses.replace(s["mcfg"], shifted_depthwise=shifted, dot_filter_gradients=dot))
  step = agile_train.make_train_step(
    model, s["eval_loss"], s["tx"], s["prep"], ig_steps=args.ig_steps, remat=remat
  )
  state = train_lib.create_train_state(jax.tree.map(jnp.array, s["variables"]), s["tx"])
  ev = s["table_vars"] if table else s["eval_vars"]
  step_args = (state, s["batch"], jax.random.key(0), s["hp"], ev)
  with autodiff_reductions(autodiff):
    grouped = count_grouped_convs(step, *step_args)  # 0 when the shifted depthwise path is in effect
    compiled = step.lower(*step_args).compile(options)
  return compiled, state, ev, grouped


def _ce_step(s: dict, shifted: bool, options: dict, autodiff: bool, dot: bool):
  import jax
  import jax.numpy as jnp

  from agile.models import AgileNN
  from common import train as train_lib
  from common.xla_cpu import autodiff_reductions

  model = AgileNN(dataclasses.replace(s["mcfg"], shifted_depthwise=shifted, dot_filter_gradients=dot))
  tx, prep = s["tx"], s["prep"]

  def ce_loss(params, stats, x, y):
    (logits, _), nv = model.apply(
      {"params": params, "batch_stats": stats}, x, train=True, mutable=["batch_stats"]
    )
    return train_lib.cross_entropy(logits, y), nv["batch_stats"]

  def ce_step(st, b, key):
    x = prep(b["image"], key)
    (loss, stats), g = jax.value_and_grad(ce_loss, has_aux=True)(st.params, st.batch_stats, x, b["label"])
    return train_lib.apply_gradients(st, g, tx, batch_stats=stats), loss

  state = train_lib.create_train_state(jax.tree.map(jnp.array, s["variables"]), tx)
  with autodiff_reductions(autodiff):
    compiled = jax.jit(ce_step, donate_argnums=0).lower(state, s["batch"], jax.random.key(0)).compile(options)
  return compiled, state


def _full_steps(s, names, args, tf2=None) -> tuple[dict, dict | None]:
  """The full AgileNN step of each variant: time (all variants compiled first, then timed
  interleaved, one step of each per round, the TF2 child's step first when `tf2` is given),
  compile time, FLOPs, compiled bytes (and op profile). Returns (rows, the TF2 step's times or None)."""
  import time

  import jax

  from common import profile
  from common.timing import measure_interleaved

  rows, calls = {}, {}
  if tf2 is not None:
    calls["tf2"] = (tf2.step, None)
  for name in names:
    t0 = time.perf_counter()
    compiled, state, ev, grouped = full_step(s, name, args)
    rows[name] = {"compile_s": time.perf_counter() - t0, "step_flops": _flops(compiled),
                  "grouped_convs": grouped, "compiled_bytes": profile.compiled_bytes(compiled)}  # fmt: skip
    holder = {"s": state}

    def one(compiled=compiled, holder=holder, ev=ev):
      holder["s"], m = compiled(holder["s"], s["batch"], jax.random.key(1), s["hp"], ev)
      jax.block_until_ready(m)

    calls[name] = (one, compiled)
  timed = measure_interleaved({k: c[0] for k, c in calls.items()}, repeats=args.repeats, warmup=1)
  for name, row in rows.items():
    row["step_s"] = timed[name]
    row["achieved_flops_per_s"] = row["step_flops"] / timed[name]["median_s"]
    if args.profile and name in ("reference", "fast"):
      row["profile"] = profile.group_rows(profile.op_breakdown(calls[name][1], calls[name][0]))
  return rows, timed.get("tf2")


def _start_tf2(s: dict, args):
  """The TF2 step server (`agile_tf2.Child`) for this run's shapes, hyperparameters and thread
  count; an {"error": ...} row instead where it does not start."""
  import os

  from agile.data import RECIPES
  from launch.benchmarks import agile_tf2

  mean, std, _, pad = RECIPES["cifar100"]
  c = s["config"]
  flags = {"batch": args.batch, "image_size": s["batch"]["image"].shape[1], "input_size": args.input_size,
           "num_classes": args.num_classes, "fe_stride": s["mcfg"].fe_stride, "k": s["mcfg"].k,
           "num_centroids": s["mcfg"].num_centroids, "rho": c.train.rho, "lam": c.train.lam,
           "mean": mean, "std": std, "pad": pad, "threads": len(os.sched_getaffinity(0))}  # fmt: skip
  try:
    return agile_tf2.start_child(**flags)
  except RuntimeError as e:
    return {"error": str(e)}


def _tf2_results(child, timed: dict, fast_row: dict) -> dict:
  """The TF2 step's time (median, min, max), its resident set (the child's report on closing)
  and the speed ratio of the `fast` step against it, both timed interleaved in this run."""
  memory = child.close()
  keys = ("build_s", "trace_s", "threads", "tf_version", "onednn")
  return {
    "tf2_step_s": {k: timed[k] for k in ("median_s", "min_s", "max_s", "repeats")},
    "tf2_step": {**{k: child.ready[k] for k in keys}, "jit_compile": False, **memory},
    "speedup_fast_vs_tf2_same_run": timed["median_s"] / fast_row["step_s"]["median_s"],
    "speedup_fast_vs_tf2_same_run_min": timed["min_s"] / fast_row["step_s"]["min_s"],
  }


def _ce_steps(s, args) -> dict:
  """The cross-entropy-only step (no XAI losses) under each option set."""
  import jax

  from common.timing import measure
  from common.xla_cpu import CPU_OPTIONS, REDUCE_OPTIONS

  rows = {}
  ce_variants = [
    ("reference", False, {}, True, False),
    ("fast_autodiff_reductions", True, CPU_OPTIONS, True, False),
    ("fast", True, CPU_OPTIONS, False, True),
    ("fast_ynn_reduce", True, REDUCE_OPTIONS, False, True),
  ]
  for name, shifted, options, autodiff, dot in ce_variants:
    compiled, state = _ce_step(s, shifted, options, autodiff, dot)
    holder = {"s": state}

    def one_ce(compiled=compiled, holder=holder):
      holder["s"], loss = compiled(holder["s"], s["batch"], jax.random.key(1))
      jax.block_until_ready(loss)

    t = measure(one_ce, repeats=args.repeats, warmup=1)
    flops = _flops(compiled)
    rows[name] = {"step_s": t, "step_flops": flops, "achieved_flops_per_s": flops / t["median_s"]}
  return rows


def _ratios(out: dict) -> dict:
  """Speed ratios between the option sets, all measured in this run."""
  r = {}
  med = lambda part, name: out[part][name]["step_s"]["median_s"] if name in out[part] else None
  if med("full_step", "reference") and med("full_step", "fast"):
    r["full_step_speedup_fast_vs_reference"] = med("full_step", "reference") / med("full_step", "fast")
  if med("full_step", "fast_conv_filter_gradients") and med("full_step", "fast"):
    r["full_step_speedup_fast_vs_conv_filter_gradients"] = med(
      "full_step", "fast_conv_filter_gradients"
    ) / med("full_step", "fast")
  if med("full_step", "fast_ynn_reduce") and med("full_step", "fast"):
    r["full_step_speedup_ynn_reduce_vs_fast"] = med("full_step", "fast") / med("full_step", "fast_ynn_reduce")
  for part in ("full_step", "ce_only_step"):
    if med(part, "fast_autodiff_reductions") and med(part, "fast"):
      r[f"{part}_multi_output_reductions_speedup"] = med(part, "fast_autodiff_reductions") / med(part, "fast")
  if not out["ce_only_step"]:
    return r
  r["ce_only_speedup_fast_vs_reference"] = med("ce_only_step", "reference") / med("ce_only_step", "fast")
  r["ce_only_speedup_ynn_reduce_vs_fast"] = med("ce_only_step", "fast") / med(
    "ce_only_step", "fast_ynn_reduce"
  )
  if med("full_step", "fast"):
    r["xai_grad_of_grad_share_fast"] = max(0.0, 1.0 - med("ce_only_step", "fast") / med("full_step", "fast"))
  return r


def _memory(args, rows: dict) -> dict:
  """Each `--memory` variant's step memory from a child process; the peak resident set and its
  rise over the resident set before the step are also put beside the time in that variant's row."""
  from launch.benchmarks import agile_memory

  out = {}
  for name in [v for v in args.memory.split(",") if v]:
    res = agile_memory.measure_in_child(args, name)
    out[name] = res
    if name in rows and "error" not in res:
      rows[name]["peak_rss_step_bytes"] = res["peak_rss_step_bytes"]
      rows[name]["step_transient_rss_bytes"] = res["step_transient_bytes"]
  if "fast" in rows and "fast_remat" in rows:
    out["remat_time_cost"] = rows["fast_remat"]["step_s"]["median_s"] / rows["fast"]["step_s"]["median_s"]
  return out


def run(args) -> dict:
  import os

  from common.errors import ConfigError
  from common.timing import matmul_peak
  from common.xla_cpu import CPU_OPTIONS

  if args.ops_only:
    return {"config": vars(args), "ops": conv_ops(args.repeats)}
  names = [v for v in args.variants.split(",") if v]
  bad = [v for v in names + args.memory.split(",") if v and v not in VARIANTS]
  if bad:
    raise SystemExit(f"--variants/--memory {','.join(bad)}: must be from {VARIANTS}")
  if args.profile:
    names = list(dict.fromkeys(["reference", *names, "fast"]))
  if args.tf2 and args.reference != "effnetv2_s":
    raise ConfigError(
      "--tf2 times the original step, whose evaluator is EfficientNetV2-S: use --reference effnetv2_s, "
      "or --no-tf2"
    )
  if args.tf2:
    names = list(dict.fromkeys([*names, "fast"]))
  s = setup(args)
  out: dict = {"config": vars(args), "xla_flags_env": os.environ.get("XLA_FLAGS", "")}
  tf2 = _start_tf2(s, args) if args.tf2 else None
  if isinstance(tf2, dict):
    out["tf2_step"], tf2 = tf2, None
  out["full_step"], tf2_timed = _full_steps(s, names, args, tf2)
  if tf2 is not None:  # closed before the memory children start
    out.update(_tf2_results(tf2, tf2_timed, out["full_step"]["fast"]))
  out["ce_only_step"] = {} if args.skip_ce else _ce_steps(s, args)
  peak = matmul_peak(args.matmul_n, args.repeats, CPU_OPTIONS)
  out["matmul_peak_flops_per_s"] = peak["flops_per_s"]
  out["matmul_peak_default_options_flops_per_s"] = matmul_peak(args.matmul_n, args.repeats, {})["flops_per_s"]
  for part in (out["full_step"], out["ce_only_step"]):
    for row in part.values():
      row["fraction_of_matmul_peak"] = row["achieved_flops_per_s"] / peak["flops_per_s"]
  out.update(_ratios(out))
  out["step_memory"] = _memory(args, out["full_step"])
  return out
