"""The REDS pipeline as resumable steps over one workdir.

  importance : train (or resume) the dense model; G over N batches; |W*G| per unit
               (+ the magnitude and random rankings of the ablations) -> importance.npz
  knapsack   : nested widths for every budget and every ranking, uniform widths
               -> knapsack.json (widths, MACs, solve time, optimality gap)
  finetune   : permute by the ranking, joint fine-tuning + BN stage for REDS and
               each baseline, each width from scratch -> finetune.json, reds_variables/
  export     : TFLite float/int8 + TFLite Micro arrays per REDS subnetwork -> export.json

Each step runs the steps before it when their outputs are missing, and every
step rewrites report.md from what exists.
"""

from __future__ import annotations

import functools
from pathlib import Path

import jax
import ml_collections
import numpy as np

from common import app, checkpoint, micro, provenance, safeio
from common import config as cfg_lib
from common import data as data_lib
from common import report as report_lib
from common.errors import DataError, InfeasibleError
from subnets import bnstats, knapsack, losses, models, surgery
from subnets import train as train_lib
from subnets.report import write_report

METHODS = ("reds", "uniform", "magnitude", "random")
BASELINES = ("uniform", "magnitude", "random", "scratch")

# The config sections each output is made from; a reused output must have been made from the same.
_BASE = ("seed", "data", "model", "pretrain", "importance")
DEPS = {
  "importance.npz": _BASE,
  "knapsack.json": (*_BASE, "knapsack"),
  "finetune.json": (*_BASE, "knapsack", "finetune", "baselines"),
  "reds_variables": (*_BASE, "knapsack", "finetune", "baselines"),
  "reds_bn_stats": (*_BASE, "knapsack", "finetune", "baselines"),
  "export.json": (*_BASE, "knapsack", "finetune", "baselines", "export"),
}


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks every key the pipeline reads (ConfigError names key, value, allowed range)."""
  cfg_lib.check_types(config, app.load_config_file("subnets/configs/quick.py"))
  cfg_lib.check_seed(config)
  cfg_lib.check_numbers(config)
  for key in ("pretrain.max_steps", "finetune.max_steps", "baselines.scratch_epochs"):
    cfg_lib.check_range(config, key, 0, integer=True)
  cfg_lib.check_range(config, "export.representative_examples", 1, integer=True)
  if "alpha" in config.model:
    cfg_lib.check_range(config, "model.alpha", 0.0, 4.0, lo_open=True)  # MobileNet's width multiplier
  cfg_lib.check_range(config, "export.target_ram_bytes", 1024, integer=True)
  cfg_lib.check_choice(config, "data.name", ("digits", "cifar10", "fashion_mnist", "speech_commands"))
  cfg_lib.check_range(config, "data.image_size", 0, 512, integer=True)
  cfg_lib.check_range(config, "data.limit", 0, integer=True)
  for sec in ("pretrain", "finetune"):
    cfg_lib.check_range(config, f"{sec}.epochs", 0, 10_000, integer=True)
    cfg_lib.check_range(config, f"{sec}.lr", 0.0, 10.0, lo_open=True)
    cfg_lib.check_range(config, f"{sec}.batch_size", 1, 65_536, integer=True)
    cfg_lib.check_range(config, f"{sec}.checkpoint_every", 0, integer=True)
  cfg_lib.check_range(config, "finetune.bn_epochs", 0, 10_000, integer=True)
  cfg_lib.check_range(config, "finetune.bn_lr", 0.0, 10.0, lo_open=True)
  cfg_lib.check_choice(config, "finetune.bn_stats", bnstats.BN_STATS)
  cfg_lib.check_range(config, "finetune.bn_batches", 1, 1_000_000, integer=True)
  cfg_lib.check_choice(config, "finetune.loss_weights", losses.LOSS_WEIGHTS)
  cfg_lib.check_range(config, "importance.num_batches", 1, 1_000_000, integer=True)
  budgets = list(config.knapsack.budgets)
  if not budgets or any(not 0 < b < 1 for b in budgets) or budgets != sorted(budgets):
    raise cfg_lib.ConfigError(f"config.knapsack.budgets = {budgets}: must be increasing fractions in (0, 1)")
  cfg_lib.check_range(config, "knapsack.min_width", 1, integer=True)
  cfg_lib.check_range(config, "knapsack.granularity", 1, integer=True)
  cfg_lib.check_range(config, "knapsack.time_limit", 0.0, lo_open=True)
  cfg_lib.check_range(config, "knapsack.peak_bytes", 0.0)
  bad = [m for m in config.baselines.methods if m not in BASELINES]
  if bad:
    raise cfg_lib.ConfigError(f"config.baselines.methods has {bad}: allowed {list(BASELINES)}")
  cfg_lib.check_range(config, "export.latency_repeats", 1, integer=True)


def load_data(config) -> tuple[data_lib.Dataset, data_lib.Dataset]:
  d = config.data
  return _load_data(d.name, d.data_dir or None, d.image_size or None, d.limit or None)


@functools.cache  # the preflight's feasibility check and the run's context read the same data once
def _load_data(name: str, data_dir: str | None, image_size: int | None, limit: int | None):
  if name == "speech_commands":
    from subnets.audio import load_speech_commands

    return load_speech_commands(data_dir, limit)
  return data_lib.load(name, data_dir=data_dir, image_size=image_size, limit=limit)


def model_config(config, num_classes: int) -> models.ModelConfig:
  m = config.model
  over = {k: tuple(m[k]) for k in ("widths", "dw_strides", "first_kernel", "first_stride") if m.get(k)}
  if m.get("activation"):
    over["activation"] = m.activation
  if m.preset == "custom":
    return cfg_lib.to_dataclass(models.ModelConfig, {"num_classes": num_classes, **over}, "model")
  if m.preset == "mobilenet_v1":
    over["alpha"] = m.get("alpha", 0.25)
  return models.preset(m.preset, num_classes, **over)


def _tc(sec, epochs=None, lr=None) -> train_lib.TrainConfig:
  return train_lib.TrainConfig(
    epochs=sec.epochs if epochs is None else epochs,
    lr=sec.lr if lr is None else lr,
    batch_size=sec.batch_size,
    augment=bool(sec.augment),
    max_steps=sec.get("max_steps", 0) or 0,
    checkpoint_every=sec.checkpoint_every,
  )


class Run:
  """Shared context of the steps: config, data, model config, keys, workdir."""

  def __init__(self, config, workdir: Path, *, show_progress: bool = True):
    """`config` is validated and `workdir` checked and stamped (the app does it; `run_step` too)."""
    self.config, self.workdir, self.show = config, Path(workdir), show_progress
    self.train_ds, self.test_ds = load_data(config)
    self.mean, self.std = data_lib.channel_stats(self.train_ds)
    self.mcfg = model_config(config, self.train_ds.num_classes)
    self.shape = self.train_ds.image_shape
    self.costs = models.chain_costs(self.mcfg, self.shape)
    keys = jax.random.split(jax.random.key(config.seed), 6)
    self.k_init, self.k_grad, self.k_rand, self.k_ft, self.k_scratch, self.k_bn = keys

  def path(self, name: str) -> Path:
    return self.workdir / name

  def record(self, name: str) -> None:
    """Stamps output `name` with the config sections it was made from."""
    provenance.record(self.path(name), self.config, DEPS[name])

  def dense(self) -> tuple[dict, float]:
    c = self.config
    v, acc = train_lib.train_dense(
      self.mcfg, self.train_ds, self.test_ds, _tc(c.pretrain), key=self.k_init, workdir=self.path("dense"),
      mean=self.mean, std=self.std, desc="subnets: dense", show_progress=self.show,
    )  # fmt: skip
    return v, acc


def step_importance(run: Run) -> dict:
  out = run.path("importance.npz")
  if out.exists():
    scores = _load_importance(out, run.mcfg)  # a damaged file fails before any training
    variables, dense_acc = run.dense()
    return {"variables": variables, "dense_accuracy": dense_acc, **scores}
  variables, dense_acc = run.dense()
  c = run.config
  g = train_lib.accumulate_grads(
    run.mcfg, variables, run.train_ds, batch_size=c.pretrain.batch_size, num_batches=c.importance.num_batches,
    mean=run.mean, std=run.std, key=run.k_grad,
  )  # fmt: skip
  scores = {
    "reds": surgery.taylor_scores(variables["params"], g, run.mcfg),
    "magnitude": surgery.magnitude_scores(variables["params"], run.mcfg),
    "random": surgery.random_scores(run.mcfg, run.k_rand),
  }
  flat = {f"{k}_{i}": s for k, ls in scores.items() for i, s in enumerate(ls)}
  tmp = run.path(".importance.tmp.npz")
  np.savez(tmp, **flat)
  tmp.replace(out)
  run.record("importance.npz")
  return {"variables": variables, "dense_accuracy": dense_acc, **scores}


def _load_importance(path: Path, mcfg: models.ModelConfig) -> dict[str, list[np.ndarray]]:
  """The per-layer scores of importance.npz, checked against the model's widths."""
  flat = safeio.load_npz(path, what="importance file")
  out = {}
  for key in ("reds", "magnitude", "random"):
    scores = []
    for i, width in enumerate(mcfg.widths):
      name = f"{key}_{i}"
      if name not in flat:
        raise DataError(f"importance file {path} lacks {name!r}; delete it to recompute")
      scores.append(
        safeio.check_array(flat[name], path=path, what=f"importance file ({name})", shape=(width,))
      )
    out[key] = scores
  return out


def uniform_widths(costs: models.ChainCosts, units, budget: float, min_width: int) -> list[int]:
  """Largest common width multiplier whose widths fit the budget (slimmable-style)."""
  dense = costs.chain_macs(units)
  best = [min_width] * len(units)
  for s in np.linspace(0.0, 1.0, 1001):
    ws = [max(min_width, min(u, int(round(s * u)))) for u in units]
    if costs.chain_macs(ws) <= budget * dense:
      best = ws
  return best


def step_knapsack(run: Run, imp: dict | None = None) -> dict:
  out = run.path("knapsack.json")
  if out.exists():
    return safeio.load_json(out, what="knapsack result", keys=("units", "budgets", "methods"))
  imp = imp or step_importance(run)
  k = run.config.knapsack
  units = list(run.mcfg.widths)
  res = {"units": units, "budgets": list(k.budgets), "dense_macs": run.costs.macs(units),
         "chain_dense_macs": run.costs.chain_macs(units), "methods": {}}  # fmt: skip
  for method in ("reds", "magnitude", "random"):
    sols = knapsack.solve_nested(
      surgery.sorted_scores(imp[method]), run.costs.pair, run.costs.unit, list(k.budgets),
      in_width=run.costs.in_width, min_width=k.min_width, granularity=k.granularity,
      time_limit=k.time_limit, act_bytes=run.costs.act_bytes, peak_bytes=k.peak_bytes or None,
    )  # fmt: skip
    res["methods"][method] = {
      "widths": [list(s.widths) for s in sols] + [units],
      "solve_s": [s.solve_s for s in sols],
      "gap": [s.gap for s in sols],
      "status": [s.status for s in sols],
    }
  uni = [uniform_widths(run.costs, units, b, k.min_width) for b in k.budgets]
  knapsack.check_nested(uni)
  res["methods"]["uniform"] = {"widths": uni + [units]}
  for m in res["methods"].values():
    m["macs"] = [run.costs.macs(w) for w in m["widths"]]
  report_lib.write_json(out, res)
  run.record("knapsack.json")
  return res


def _perm_for(method: str, imp: dict, units) -> list[np.ndarray]:
  if method == "uniform":  # slimmable-style: the original channel order
    return [np.arange(u) for u in units]
  return surgery.sort_permutations(imp[method])


def _finetune_method(run: Run, method: str, i: int, imp: dict, ks: dict, ft_kw: dict, per_subnet: bool):
  """(result row, variables, per-subnetwork BN statistics or None) of one ordering `method`: the
  dense net permuted by it, fine-tuned at its knapsack widths (weights, then BN)."""
  c = run.config
  widths = ks["methods"][method]["widths"]
  v = surgery.permute_variables(imp["variables"], run.mcfg, _perm_for(method, imp, run.mcfg.widths))
  before = train_lib.evaluate_subnets(run.mcfg, v, widths, run.test_ds, mean=run.mean, std=run.std)
  v, acc1 = train_lib.finetune(
    run.mcfg, v, widths, run.train_ds, run.test_ds, _tc(c.finetune), part="weights",
    key=jax.random.fold_in(run.k_ft, i), workdir=run.path(f"finetune/{method}"),
    desc=f"subnets: finetune {method}", **ft_kw,
  )  # fmt: skip
  v, acc2 = train_lib.finetune(
    run.mcfg, v, widths, run.train_ds, run.test_ds, _tc(c.finetune, c.finetune.bn_epochs, c.finetune.bn_lr),
    part="bn", key=jax.random.fold_in(run.k_bn, i), workdir=run.path(f"finetune/{method}_bn"),
    desc=f"subnets: BN stage {method}", **ft_kw,
  )  # fmt: skip
  row = {
    "widths": widths, "macs": ks["methods"][method]["macs"], "accuracy_before": before,
    "accuracy_stage1": acc1, "accuracy": acc2,
    "loss_weights": losses.loss_weights(run.mcfg, widths, run.shape, c.finetune.loss_weights).tolist(),
  }  # fmt: skip
  stats = None
  if per_subnet:
    stats = bnstats.recalibrate(
      run.mcfg, v, widths, run.train_ds, mean=run.mean, std=run.std, batch_size=c.finetune.batch_size,
      num_batches=c.finetune.bn_batches, key=jax.random.fold_in(run.k_bn, 1000 + i),
    )  # fmt: skip
    row["accuracy_stored_bn"] = acc2
    row["accuracy"] = bnstats.evaluate(run.mcfg, v, widths, stats, run.test_ds, mean=run.mean, std=run.std)
  return row, v, stats


def _scratch(run: Run, imp: dict, ks: dict) -> dict:
  """The from-scratch baseline: each of REDS's subnetworks but the dense one trained alone."""
  c = run.config
  widths = ks["methods"]["reds"]["widths"]
  scratch_epochs = c.baselines.scratch_epochs or c.pretrain.epochs + c.finetune.epochs + c.finetune.bn_epochs
  accs = []
  for i, ws in enumerate(widths[:-1]):
    _, a = train_lib.train_dense(
      run.mcfg.with_widths(ws), run.train_ds, run.test_ds, _tc(c.pretrain, scratch_epochs),
      key=jax.random.fold_in(run.k_scratch, i), workdir=run.path(f"scratch/{i}"), mean=run.mean, std=run.std,
      desc=f"subnets: scratch {ws}", show_progress=run.show,
    )  # fmt: skip
    accs.append(a)
  return {"widths": widths, "macs": ks["methods"]["reds"]["macs"], "epochs": scratch_epochs,
          "accuracy": accs + [imp["dense_accuracy"]]}  # fmt: skip


def step_finetune(run: Run) -> dict:
  out = run.path("finetune.json")
  if out.exists() and run.path("reds_variables").exists():
    result = safeio.load_json(out, what="fine-tuning result", keys=("dense_accuracy", "methods"))
    reds_variables(run)  # what a step skips to must be readable
    reds_bn_stats(run, result["methods"]["reds"]["widths"])
    return result
  imp = step_importance(run)
  ks = step_knapsack(run, imp)
  c = run.config
  # "per_subnet": BN normalises with batch statistics while fine-tuning and every subnetwork gets its own
  # statistics afterwards (`subnets.bnstats`); "shared": the original's frozen, shared dense statistics.
  per_subnet = c.finetune.bn_stats == "per_subnet"
  ft_kw = dict(mean=run.mean, std=run.std, show_progress=run.show, weighting=c.finetune.loss_weights,
               bn_batch=per_subnet)  # fmt: skip
  res = {"dense_accuracy": imp["dense_accuracy"], "methods": {}}
  methods = ["reds"] + [m for m in c.baselines.methods if m in METHODS]
  for i, method in enumerate(methods):
    res["methods"][method], v, stats = _finetune_method(run, method, i, imp, ks, ft_kw, per_subnet)
    if method == "reds":
      checkpoint.save_pytree(run.path("reds_variables").absolute(), v)
      run.record("reds_variables")
      if per_subnet:
        checkpoint.save_pytree(run.path("reds_bn_stats").absolute(), {str(k): s for k, s in enumerate(stats)})
        run.record("reds_bn_stats")
  if "scratch" in c.baselines.methods:
    res["methods"]["scratch"] = _scratch(run, imp, ks)
  report_lib.write_json(out, res)
  run.record("finetune.json")
  return res


def reds_variables(run: Run) -> dict:
  like = models.init_variables(run.mcfg, jax.random.key(0), run.shape)
  return checkpoint.load_pytree(
    run.path("reds_variables").absolute(), like, rerun="edgeinfer subnets finetune"
  )


def reds_bn_stats(run: Run, widths) -> list[dict] | None:
  """The per-subnetwork BN statistics (None with `finetune.bn_stats = "shared"`)."""
  if run.config.finetune.bn_stats != "per_subnet":
    return None
  like = models.init_variables(run.mcfg, jax.random.key(0), run.shape)
  like = {str(k): surgery.slice_variables(like, run.mcfg, w)["batch_stats"] for k, w in enumerate(widths)}
  got = checkpoint.load_pytree(run.path("reds_bn_stats").absolute(), like, rerun="edgeinfer subnets finetune")
  return [got[str(k)] for k in range(len(widths))]


def step_export(run: Run) -> dict:
  from subnets.export import export_subnets, tflm_switching

  ft = step_finetune(run)
  widths = ft["methods"]["reds"]["widths"]
  c = run.config
  labels = [f"{int(round(b * 100))}pct" for b in c.knapsack.budgets] + ["dense"]
  rows = export_subnets(
    run.mcfg, reds_variables(run), widths, labels, run.train_ds, run.test_ds, mean=run.mean, std=run.std,
    stats_list=reds_bn_stats(run, widths), out_dir=run.path("exports"), int8=c.export.int8, representative_examples=c.export.representative_examples,
    latency_repeats=c.export.latency_repeats, ram_bytes=micro.target_ram_bytes(c, "export.target_ram_bytes"),
  )  # fmt: skip
  res = {"rows": rows}
  fbs = [run.path("exports") / r["int8_file"] for r in rows if "int8_file" in r]
  if len(fbs) > 1:
    res["tflm_switching"] = tflm_switching([p.read_bytes() for p in fbs], run.test_ds.images[:1])
  report_lib.write_json(run.path("export.json"), res)
  run.record("export.json")
  return res


def _reported(step):
  return app.reported(step, write_report)


STEPS = {
  "importance": app.Step(_reported(step_importance), "train (or resume) the dense model; importance.npz"),
  "knapsack": app.Step(_reported(step_knapsack), "nested widths for every budget; knapsack.json"),
  "finetune": app.Step(_reported(step_finetune), "joint fine-tuning, BN stage, baselines; finetune.json"),
  "export": app.Step(_reported(step_export), "TFLite float/int8 + TFLite Micro per subnetwork; export.json"),
}


def check_feasible(config) -> None:
  """Refuses budgets the knapsack cannot meet (the smallest budget under the minimum widths' cost, a
  peak-memory bound under them), naming config.knapsack.budgets and the smallest feasible budget."""
  train_ds, _ = load_data(config)
  mcfg = model_config(config, train_ds.num_classes)
  costs, k = models.chain_costs(mcfg, train_ds.image_shape), config.knapsack
  try:
    knapsack.check_budgets(
      list(mcfg.widths), costs.pair, costs.unit, list(k.budgets),
      in_width=costs.in_width, min_width=k.min_width, act_bytes=costs.act_bytes, peak_bytes=k.peak_bytes or None,
    )  # fmt: skip
  except InfeasibleError as e:
    raise InfeasibleError(f"config.knapsack.budgets = {list(k.budgets)}: {e}") from None


def preflight(config, workdir: Path) -> None:
  """Everything that can refuse a run, before anything is written: outputs made from other config
  values, and budgets the knapsack cannot meet."""
  provenance.check(workdir, config, DEPS)
  check_feasible(config)


def run_step(name: str, config, workdir, *, show_progress: bool = True) -> dict:
  """Runs one step (and what it needs), then rewrites report.md."""
  context = lambda c, w: Run(c, Path(w), show_progress=show_progress)
  spec = app.App("subnets", STEPS, validate=validate, preflight=preflight, context=context)
  return app.run_steps(spec, config, workdir, [name])[name]
