"""The RTCoInfer pipeline as resumable steps over one workdir (`STEPS`, run by `coinfer.main`).

  init       : train the largest setup (the teacher) from scratch -> init.json, init/
  cluster    : per training setup, the cosine similarity of the gradient of the server's first
               projection filter with that of the largest setup, summed over `cluster.steps`
               batches; 1-D DBSCAN (min_samples=1) with eps found for `cluster.num_clusters`
               -> cluster.json
  distill    : the SW-CNN; each step trains the largest, the smallest and one random setup per
               cluster on soft targets of the frozen initialization model (flags noI/noD/noC),
               per ablation -> distill_<ablation>.json, _correct.npy, _final/
  individual : one model per setup (the benchmark the SW-CNN is judged against), one after
               another -> individual.json, individual_correct.npy
  baselines  : CLIO and SPINN -> clio.json, spinn.json
  simulate   : the controllers over the configured traces -> simulate.json
  export     : device TFLite (+ int8, TFLite Micro) and server ONNX per setup -> export.json
  report     : report.md and its plots from what exists

Each step skips when its outputs exist (and resumes its training from checkpoints when they do
not); every output is stamped with the config sections it was made from (`common.provenance`),
so a workdir made from other values is refused before anything is written.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from coinfer import baselines, compress, simulate
from coinfer import controller as C
from coinfer import export as export_lib
from coinfer import models as models_lib
from coinfer import report as report_lib
from coinfer import train as T
from common import app, checkpoint, provenance, safeio, traces
from common import config as cfg_lib
from common import report as common_report
from common import train as train_lib
from common.errors import CheckpointError, ConfigError
from common.serving import runner

_INIT = ("seed", "data", "setups", "model", "train", "init")
_SW = (*_INIT, "cluster", "distill")
# The config sections each output is made from; a reused output must have been made from the same.
DEPS = {
  "init.json": _INIT,
  "cluster.json": (*_INIT, "cluster"),
  **{f"distill_{ab}.json": _SW for ab in T.ABLATIONS},
  "individual.json": (*_INIT, "individual"),
  "clio.json": (*_INIT, "baselines"),
  "spinn.json": (*_INIT, "baselines"),
  "simulate.json": (*_SW, "stream"),
  "export.json": (*_SW, "export"),
}


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks the keys the steps read (ConfigError names key, value and what is allowed)."""
  cfg_lib.check_types(config, app.load_config_file("coinfer/configs/quick.py"))
  cfg_lib.check_seed(config, "seed")
  cfg_lib.check_numbers(config)
  runner.validate(config)
  _check_controller(config)
  for key in ("init", "distill", "individual", "baselines"):
    cfg_lib.check_range(config, f"{key}.max_steps", 0, integer=True)
  cfg_lib.check_range(config, "distill.calibrate_batches", 1, integer=True)
  cfg_lib.check_range(config, "baselines.spinn_exit_weight", 0.0)
  cfg_lib.check_range(config, "model.last_channels", 1, integer=True)
  cfg_lib.check_range(config, "model.stride_cap", 1, integer=True)
  cfg_lib.check_range(config, "stream.frames", 1, integer=True)
  cfg_lib.check_range(config, "stream.history", 1, integer=True)
  for key in ("device_macs_per_s", "server_macs_per_s"):
    cfg_lib.check_range(config, f"stream.{key}", 0.0, lo_open=True)
  cfg_lib.check_range(config, "train.log_every", 0, integer=True)
  cfg_lib.check_range(config, "train.weight_decay", 0.0)
  cfg_lib.check_range(config, "export.parity_images", 0, integer=True)
  cfg_lib.check_range(config, "export.target_ram_bytes", 1024, integer=True)
  cfg_lib.check_range(config, "data.image_size", 1, 512, integer=True)
  if config.data.limit is not None:
    cfg_lib.check_range(config, "data.limit", 0, integer=True)
  cfg_lib.check_positive_ints(config, "setups.channels")
  cfg_lib.check_positive_ints(config, "setups.bits")
  cfg_lib.check_positive_ints(config, "setups.train_bits")
  cfg_lib.check_range(config, "train.batch_size", 1, integer=True)
  cfg_lib.check_range(config, "train.checkpoint_every", 0, integer=True)
  cfg_lib.check_choice(config, "train.optimizer", ["adam", "sgd"])
  for stage in ("init", "distill", "individual", "baselines"):
    cfg_lib.check_range(config, f"{stage}.lr", 0, lo_open=True)
    cfg_lib.check_range(config, f"{stage}.epochs", 1, integer=True)
  cfg_lib.check_range(config, "cluster.num_clusters", 1, integer=True)
  cfg_lib.check_range(config, "cluster.steps", 1, integer=True)
  cfg_lib.check_range(config, "stream.fps", 0, lo_open=True)
  cfg_lib.check_range(config, "stream.deadline_s", 0, lo_open=True)
  cfg_lib.check_range(config, "stream.horizon", 1, 50, integer=True)
  cfg_lib.check_choice(config, "stream.method", ["dp", "milp", "relax"])
  cfg_lib.check_range(config, "stream.trace_seconds", 0, 86_400, lo_open=True)
  bad = [k for k in config.stream.traces if k not in traces.GENERATORS]
  if bad:
    raise ConfigError(f"config.stream.traces has {bad}: the synthetic kinds are {sorted(traces.GENERATORS)}")
  for f in config.stream.trace_files:  # a trace file is read (and refused) before anything is written
    traces.load(str(f), seconds=config.stream.trace_seconds)
  cfg_lib.check_range(config, "model.width_mult", 0, lo_open=True)
  if max(config.setups.channels) > 32:
    raise ConfigError(
      f"config.setups.channels = {list(config.setups.channels)}: the stem has at most 32 channels"
    )
  for ab in config.ablations:
    parse_ablation(ab, key="config.ablations")
  _check_setups(config)


def _check_setups(config: ml_collections.ConfigDict) -> None:
  """The setup grid, the training bits and `individual.subset` against each other (the run's context
  and the individual step would refuse them only after config.json is written)."""
  setups = {s.name for s in compress.make_setups(config.setups.channels, config.setups.bits)}
  if not set(config.setups.train_bits) & set(config.setups.bits):
    raise ConfigError(
      f"config.setups.train_bits = {list(config.setups.train_bits)}: none of them is in setups.bits"
    )
  for pair in config.individual.subset:
    ok = isinstance(pair, list | tuple) and len(pair) == 2 and all(type(x) is int for x in pair)
    if not ok or f"N{pair[0]}Q{pair[1]}" not in setups:
      raise ConfigError(
        f"config.individual.subset has {safeio.quote(pair)}: each entry must be a (channels, bits) "
        "pair of the configured setups"
      )


def _check_controller(config) -> None:
  spec = config.deploy.controller
  names = [s.name for s in compress.make_setups(config.setups.channels, config.setups.bits)]
  if spec not in ("mpc", "rate", "buffer") and not (spec.startswith("fixed:") and spec[6:] in names):
    raise ConfigError(
      f"config.deploy.controller = {spec!r}: must be mpc, rate, buffer or fixed:<setup> with a setup of {names}"
    )


def preflight(config, workdir: Path) -> None:
  """Refuses a workdir whose outputs were made from other config values (before anything is written)."""
  provenance.check(workdir, config, DEPS)


@dataclasses.dataclass(frozen=True)
class Run:
  """What the steps share, built once per command: the training context (data loaded), the workdir,
  and the ablations the distill step trains."""

  ctx: T.Context
  workdir: Path
  ablations: tuple[str, ...]

  @classmethod
  def build(cls, config, workdir: Path, ablation: str | None = None) -> Run:
    if ablation:
      parse_ablation(ablation, key="--ablation")
    return cls(T.build(config), Path(workdir), (ablation,) if ablation else tuple(config.ablations))

  def path(self, name: str) -> Path:
    return self.workdir / name

  def save(self, name: str, obj: dict) -> dict:
    """Writes workdir/<name>.json and stamps it with the config sections it was made from."""
    common_report.write_json(self.path(f"{name}.json"), obj)
    provenance.record(self.path(f"{name}.json"), self.ctx.config, DEPS[f"{name}.json"])
    return obj

  def done(self, name: str, *also: str) -> dict | None:
    """The result of `name` when it and the files `also` exist (the step then skips), else None.

    What a step skips to must be readable: each of `also` is read back (an `.npy` array or a
    checkpoint folder), and a damaged one is an error naming it and the step that remakes it.
    """
    if not all(self.path(a).exists() for a in also):
      return None
    out = safeio.load_json_if_present(self.path(f"{name}.json"), what=f"{name} result")
    if out is not None:
      step = f"edgeinfer coinfer {name.split('_')[0]}"
      for a in also:
        if a.endswith(".npy"):
          safeio.load_array(self.path(a), what=f"{name} result ({step} remakes it)")
        else:
          checkpoint.load_pytree(self.path(a), rerun=step)
    return out


def parse_ablation(name: str, *, key: str = "ablation") -> tuple[bool, bool, bool]:
  """(use I, use D, use C) of an ablation name such as "I-noD-C"."""
  if name not in T.ABLATIONS:
    raise ConfigError(f"{key} {name!r}: must be one of {list(T.ABLATIONS)}")
  parts = name.split("-")
  return parts[0] == "I", parts[1] == "D", parts[2] == "C"


def _setup_rows(ctx, correct: np.ndarray, ids) -> list[dict]:
  return [
    {"id": int(i), "name": ctx.setups[int(i)].name, "accuracy": float(correct[k].mean())}
    for k, i in enumerate(ids)
  ]


def _fit(ctx: T.Context, state, step, loop, key, workdir: Path, subdir: str, **tags):
  return train_lib.fit(
    state, step, ctx.train_ds, loop, key=key, workdir=workdir, checkpoint_subdir=subdir, tags=tags
  )[0]


def step_init(run: Run) -> dict:
  if (out := run.done("init")) is not None:
    return out
  ctx, cfg = run.ctx, run.ctx.config
  k_init, k_fit = jax.random.split(jax.random.fold_in(jax.random.key(cfg.seed), 1))
  loop = T.loop_config(cfg, cfg.init, "init", len(ctx.train_ds))
  tx = T.make_tx(cfg, T.total_steps(loop, len(ctx.train_ds)), cfg.init.lr)
  state = T.init_state(ctx, tx, k_init)
  ids = jnp.asarray([ctx.teacher_id], jnp.int32)
  state = _fit(
    ctx, state, T.make_train_step(ctx, tx, lambda rng: ids), loop, k_fit, run.workdir, "init", stage="init"
  )
  correct = T.make_eval_fn(ctx)(state.params, state.batch_stats, [ctx.teacher_id])
  return run.save("init", {"teacher": ctx.setups[ctx.teacher_id].name, "accuracy": float(correct.mean())})


def step_cluster(run: Run) -> dict:
  if (out := run.done("cluster")) is not None:
    return out
  ctx, cfg = run.ctx, run.ctx.config
  feature = T.gradient_similarity(ctx, T.teacher(ctx, run.workdir), cfg.cluster.steps)
  eps, labels = T.search_eps(feature, cfg.cluster.num_clusters)
  clusters = [[int(ctx.train_ids[j]) for j in np.flatnonzero(labels == k)] for k in sorted(set(labels))]
  out = {
    "eps": eps,
    "feature": {ctx.setups[int(i)].name: float(f) for i, f in zip(ctx.train_ids, feature, strict=True)},
    "clusters": clusters,
    "cluster_names": [[ctx.setups[i].name for i in c] for c in clusters],
  }
  return run.save("cluster", out)


def load_clusters(run: Run) -> list[list[int]]:
  path = run.path("cluster.json")
  if not path.exists():
    raise CheckpointError(f"no {path}; run `edgeinfer coinfer cluster` first (or use the noC ablation)")
  clusters = safeio.load_json(path, what="clusters", keys=("clusters",))["clusters"]
  if not isinstance(clusters, list) or not all(
    isinstance(c, list) and all(isinstance(i, int) and i >= 0 for i in c) for c in clusters
  ):
    raise CheckpointError(f"{path}: 'clusters' must be lists of setup indices; rerun the cluster step")
  if any(i >= len(run.ctx.setups) for c in clusters for i in c):
    raise CheckpointError(f"{path} does not match the configured setups; rerun the cluster step")
  return clusters


def distillation(run: Run, ablation: str = "I-D-C") -> dict:
  """Trains the SW-CNN under an ablation ("I-D-C" is the full method) into workdir/distill_<ablation>/."""
  stage = f"distill_{ablation}"
  if (out := run.done(stage, f"{stage}_correct.npy", f"{stage}_final")) is not None:
    return out
  ctx, cfg = run.ctx, run.ctx.config
  use_i, use_d, use_c = parse_ablation(ablation)
  k_init, k_fit = jax.random.split(jax.random.fold_in(jax.random.key(cfg.seed), 3))
  loop = T.loop_config(cfg, cfg.distill, stage, len(ctx.train_ds))
  tx = T.make_tx(cfg, T.total_steps(loop, len(ctx.train_ds)), cfg.distill.lr)
  state = T.init_state(ctx, tx, k_init)
  teacher = T.teacher(ctx, run.workdir) if (use_i or use_d) else None
  if use_i:
    params = jax.tree.map(jnp.copy, teacher["params"])  # the step donates the student's buffers
    stats = models_lib.stack_stats(teacher["batch_stats"], len(ctx.setups))
    state = state.replace(params=params, batch_stats=stats, opt_state=tx.init(params))
  fixed = jnp.asarray([ctx.largest, ctx.smallest], jnp.int32)
  if use_c:
    clusters = load_clusters(run)
    width = max(len(c) for c in clusters)
    table = jnp.asarray([c + [c[0]] * (width - len(c)) for c in clusters], jnp.int32)
    counts = jnp.asarray([len(c) for c in clusters], jnp.int32)

    def pick(rng):
      u = jax.random.uniform(rng, (len(clusters),))
      choice = jnp.minimum((u * counts).astype(jnp.int32), counts - 1)
      return jnp.concatenate([fixed, table[jnp.arange(len(clusters)), choice]])
  else:
    every = jnp.concatenate([fixed, jnp.asarray(ctx.train_ids, jnp.int32)])

    def pick(rng):
      return every

  step = T.make_train_step(ctx, tx, pick, teacher=teacher if use_d else None)
  state = _fit(ctx, state, step, loop, k_fit, run.workdir, stage, stage="distill", ablation=ablation)
  all_ids = np.arange(len(ctx.setups))
  stats = T.calibrate_bn(ctx, state.params, state.batch_stats, all_ids, batches=cfg.distill.calibrate_batches)
  correct = T.make_eval_fn(ctx)(state.params, stats, all_ids)
  common_report.save_npy(run.path(f"{stage}_correct.npy"), correct)
  checkpoint.save_pytree(run.path(f"{stage}_final"), {"params": state.params, "batch_stats": stats})
  return run.save(stage, {"ablation": ablation, "setups": _setup_rows(ctx, correct, all_ids)})


def step_distill(run: Run) -> dict:
  return {ab: distillation(run, ab) for ab in run.ablations}


def individual_ids(ctx: T.Context) -> np.ndarray:
  subset = ctx.config.individual.subset
  if not subset:
    return np.arange(len(ctx.setups))
  names = {s.name: i for i, s in enumerate(ctx.setups)}
  ids = []
  for c, b in subset:
    name = f"N{c}Q{b}"
    if name not in names:
      raise ConfigError(f"config.individual.subset has {[c, b]}, which is not a configured setup")
    ids.append(names[name])
  return np.asarray(ids, np.int32)


def step_individual(run: Run) -> dict:
  """Trains one model per setup (all, or `individual.subset`), one after another.

  The models share one compiled step (the setup id is an argument), and each checkpoints
  under workdir/individual/<setup>/, so a killed run resumes at the model it was training.
  (Training them side by side with a vmapped step is 2-3x slower on CPU: the per-model
  weights turn every convolution into a grouped one.)
  """
  if (out := run.done("individual", "individual_correct.npy")) is not None:
    return out
  ctx, cfg = run.ctx, run.ctx.config
  ids = individual_ids(ctx)
  k_init, k_fit = jax.random.split(jax.random.fold_in(jax.random.key(cfg.seed), 4))
  loop = T.loop_config(cfg, cfg.individual, "individual", len(ctx.train_ds))
  tx = T.make_tx(cfg, T.total_steps(loop, len(ctx.train_ds)), cfg.individual.lr)
  teacher = T.teacher(ctx, run.workdir) if cfg.individual.from_init else None
  step = T.make_train_step(ctx, tx, None)
  evaluate = T.make_eval_fn(ctx)
  rows, correct = [], []
  for m, i in enumerate(ids):
    name = ctx.setups[int(i)].name
    state = T.init_state(ctx, tx, jax.random.fold_in(k_init, m))
    if teacher is not None:
      params = jax.tree.map(jnp.copy, teacher["params"])  # the step donates its buffers
      stats = models_lib.stack_stats(teacher["batch_stats"], len(ctx.setups))
      state = state.replace(params=params, batch_stats=stats, opt_state=tx.init(params))
    id_arr = jnp.asarray([i], jnp.int32)
    state = _fit(
      ctx,
      state,
      lambda s, b, r, id_arr=id_arr: step(s, b, r, id_arr),
      dataclasses.replace(loop, desc=f"individual {name} ({m + 1}/{len(ids)})"),
      jax.random.fold_in(k_fit, m),
      run.workdir,
      f"individual/{name}",
      stage="individual",
      setup=name,
    )
    correct.append(np.asarray(evaluate(state.params, state.batch_stats, [int(i)]))[0])
    rows.append({"id": int(i), "name": name, "accuracy": float(correct[-1].mean())})
  # [model, image], rows as `setups`
  common_report.save_npy(run.path("individual_correct.npy"), np.stack(correct))
  return run.save("individual", {"setups": rows, "all_setups": len(ids) == len(run.ctx.setups)})


def step_baselines(run: Run) -> dict:
  clio = run.done("clio") or run.save("clio", baselines.train_clio(run.ctx, run.workdir))
  spinn = run.done("spinn") or run.save("spinn", baselines.train_spinn(run.ctx, run.workdir))
  return {"clio": clio, "spinn": spinn}


def stream_profile(run: Run) -> tuple[C.Profile, np.ndarray]:
  """The controller's profile: SW-CNN accuracies of the I-D-C run, payloads at stream.image_shape."""
  path = run.path("distill_I-D-C_correct.npy")
  if not path.exists():
    raise CheckpointError(f"no {path}; run `edgeinfer coinfer distill` first")
  correct = safeio.load_array(path, what="per-image results", shape=(len(run.ctx.setups), None))
  s = run.ctx.config.stream
  prof = C.make_profile(
    run.ctx.setups,
    correct.mean(axis=1),
    image_shape=tuple(s.image_shape),
    device_macs_per_s=s.device_macs_per_s,
    server_macs_per_s=s.server_macs_per_s,
  )
  return prof, correct


def step_simulate(run: Run) -> dict:
  if (out := run.done("simulate")) is not None:
    return out
  s = run.ctx.config.stream
  prof, correct = stream_profile(run)
  specs = [(k, i) for i, k in enumerate(s.traces)] + [(f, 0) for f in s.trace_files]
  results = {}
  for spec, i in specs:
    trace = traces.load(spec, seed=run.ctx.config.seed + i, seconds=s.trace_seconds)
    row = {}
    for name, ctl in simulate.controllers(prof, trace, s).items():
      out = simulate.run(
        ctl, trace, profile=prof, fps=s.fps, deadline_s=s.deadline_s, frames=s.frames, correct=correct
      )
      row[name] = out["summary"]
    results[trace.name] = {"mean_mbps": trace.mean_bps() / 1e6, "controllers": row}
  front = compress.pareto_front(prof.bits, prof.accuracy, prof.t_dev + prof.t_srv)
  return run.save("simulate", {"traces": results, "pareto": [prof.names[i] for i in front]})


def step_export(run: Run) -> dict:
  if (out := run.done("export")) is not None:
    return out
  final = run.path("distill_I-D-C_final")
  if not final.exists():
    raise CheckpointError(f"no {final}; run `edgeinfer coinfer distill` first")
  variables = checkpoint.load_pytree(final, rerun="edgeinfer coinfer distill")
  return run.save("export", export_lib.export_all(run.ctx, variables, run.workdir))


def step_report(run: Run) -> dict:
  return {"report": str(report_lib.write_report(run.ctx, run.workdir))}


STEPS = {
  "init": app.Step(step_init, "train the teacher (the largest setup); init.json"),
  "cluster": app.Step(step_cluster, "gradient-similarity clusters of the training setups; cluster.json"),
  "distill": app.Step(
    step_distill, "the SW-CNN per ablation (--ablation, else config.ablations); distill_*.json"
  ),
  "individual": app.Step(step_individual, "one model per setup (individual.subset); individual.json"),
  "baselines": app.Step(step_baselines, "CLIO and SPINN; clio.json, spinn.json"),
  "simulate": app.Step(step_simulate, "the controllers over the configured traces; simulate.json"),
  "export": app.Step(step_export, "device TFLite/int8/TFLite Micro + server ONNX per setup; export.json"),
  "report": app.Step(step_report, "report.md and its plots from what the steps wrote"),
  **runner.app_steps("coinfer", lambda run: run.ctx.config),
}
TRAINING = tuple(s for s in STEPS if s not in ("deploy", "device"))  # the steps of `all`


def run_steps(config, workdir: Path, names=TRAINING, *, ablation: str | None = None) -> dict:
  """Runs steps as the command line does (validate, preflight, config.json, one Run): for the
  quickstart stage and tests."""
  context = lambda c, w: Run.build(c, Path(w), ablation)
  spec = app.App("coinfer", STEPS, validate=validate, preflight=preflight, context=context)
  return app.run_steps(spec, config, workdir, list(names))
