"""The training stages of RTCoInfer as functions of (config, workdir), each also a CLI step.

1. `initialization`: train the largest setup (the teacher) from scratch.
2. `clustering`: per training setup, the cosine similarity of the gradient of the server's
   first projection filter with that of the largest setup, summed over `cluster.steps`
   batches; 1-D DBSCAN (min_samples=1) with eps found automatically for `cluster.num_clusters`.
3. `distillation`: the SW-CNN; each step trains the largest, the smallest and one random
   setup per cluster on soft targets of the frozen initialization model (flags noI/noD/noC).
4. `individual`: one model per setup, the benchmark the SW-CNN is judged against.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from sklearn.cluster import DBSCAN

from coinfer import models as models_lib
from coinfer import train as T
from common import report, safeio, stats
from common import train as train_lib
from common.errors import CheckpointError, ConfigError, InfeasibleError


def _like_state(ctx: T.Context, lr: float):
  tx = T.make_tx(ctx.config, 1, lr)
  return T.init_state(ctx, tx, jax.random.key(0))


def _setup_rows(ctx, correct: np.ndarray, ids) -> list[dict]:
  return [
    {"id": int(i), "name": ctx.setups[int(i)].name, "accuracy": float(correct[k].mean())}
    for k, i in enumerate(ids)
  ]


def initialization(ctx: T.Context, workdir: Path) -> dict:
  cfg = ctx.config
  key = jax.random.fold_in(jax.random.key(cfg.seed), 1)
  k_init, k_fit = jax.random.split(key)
  loop = T.loop_config(cfg, cfg.init, "init", len(ctx.train_ds))
  tx = T.make_tx(cfg, T.total_steps(loop, len(ctx.train_ds)), cfg.init.lr)
  state = T.init_state(ctx, tx, k_init)
  ids = jnp.asarray([ctx.teacher_id], jnp.int32)
  step = T.make_train_step(ctx, tx, lambda rng: ids)
  state, _ = train_lib.fit(
    state, step, ctx.train_ds, loop, key=k_fit, workdir=workdir, checkpoint_subdir="init"
  )
  correct = T.make_eval_fn(ctx)(state.params, state.batch_stats, [ctx.teacher_id])
  out = {"teacher": ctx.setups[ctx.teacher_id].name, "accuracy": float(correct.mean())}
  T.save_json(workdir, "init", out)
  return out


def init_result(ctx: T.Context, workdir: Path):
  state = T.restore_stage(ctx, workdir, "init", _like_state(ctx, ctx.config.init.lr))
  row = models_lib.select_stats(state.batch_stats, ctx.teacher_id)
  return {"params": state.params, "batch_stats": row}


def search_eps(values: np.ndarray, num_clusters: int) -> tuple[float, np.ndarray]:
  """eps for 1-D DBSCAN(min_samples=1) giving exactly `num_clusters` clusters, and the labels.

  With min_samples=1 the clusters are the runs of sorted values whose gaps are <= eps, so
  the count falls as eps crosses each gap: eps halfway between the (k-1)-th and k-th largest
  gaps gives k clusters. The result is checked with scikit-learn's DBSCAN.
  """
  v = np.sort(np.asarray(values, float).ravel())
  gaps = np.sort(np.diff(v))[::-1]
  distinct = int((gaps > 0).sum()) + 1
  if not 1 <= num_clusters <= distinct:
    raise InfeasibleError(
      f"cannot form {num_clusters} clusters from {distinct} distinct feature values; "
      f"set config.cluster.num_clusters in [1, {distinct}]"
    )
  hi = gaps[num_clusters - 2] if num_clusters >= 2 else (v[-1] - v[0]) * 2 + 1.0
  lo = gaps[num_clusters - 1] if num_clusters - 1 < len(gaps) else 0.0
  eps = float((hi + lo) / 2) if hi > lo else float(hi)
  eps = max(eps, 1e-12)
  labels = DBSCAN(eps=eps, min_samples=1).fit(np.asarray(values, float).reshape(-1, 1)).labels_
  if len(set(labels)) != num_clusters:
    raise InfeasibleError(f"DBSCAN found {len(set(labels))} clusters at eps={eps}, not {num_clusters}")
  return eps, labels


def clustering(ctx: T.Context, workdir: Path) -> dict:
  cfg = ctx.config
  teacher = init_result(ctx, workdir)
  arr = jnp.asarray(ctx.setups_arr)
  ids = jnp.asarray(ctx.train_ids)

  @jax.jit
  def similarities(x, labels):
    def filter_grad(idx):
      def loss_fn(p):
        v = {"params": p, "batch_stats": teacher["batch_stats"]}
        (logits, _), _ = ctx.model.apply(v, x, arr[idx, 0], arr[idx, 1], train=True, mutable=["batch_stats"])
        return train_lib.cross_entropy(logits, labels)

      g = jax.grad(loss_fn)(teacher["params"])
      return g["server"]["block1_project"]["kernel"][0, 0, :, 0]

    g = jax.lax.map(filter_grad, ids)  # [S_train, 32]
    ref = filter_grad(jnp.int32(ctx.largest))
    return g @ ref / (jnp.linalg.norm(g, axis=1) * jnp.linalg.norm(ref) + 1e-12)

  bs = min(cfg.train.batch_size, len(ctx.train_ds))
  from common import data as data_lib

  key = jax.random.fold_in(jax.random.key(cfg.seed), 2)
  feature = np.zeros(len(ctx.train_ids))
  for i, batch in enumerate(data_lib.batches(ctx.train_ds, bs, key=key)):
    if i >= cfg.cluster.steps:
      break
    feature += np.asarray(similarities(T._prep(ctx, batch["image"]), batch["label"]))
  eps, labels = search_eps(feature, cfg.cluster.num_clusters)
  clusters = [[int(ctx.train_ids[j]) for j in np.flatnonzero(labels == k)] for k in sorted(set(labels))]
  out = {
    "eps": eps,
    "feature": {ctx.setups[int(i)].name: float(f) for i, f in zip(ctx.train_ids, feature, strict=True)},
    "clusters": clusters,
    "cluster_names": [[ctx.setups[i].name for i in c] for c in clusters],
  }
  T.save_json(workdir, "cluster", out)
  return out


def _load_clusters(ctx: T.Context, workdir: Path) -> list[list[int]]:

  path = Path(workdir) / "cluster.json"
  if not path.exists():
    raise CheckpointError(f"no {path}; run `python -m coinfer.main cluster` first (or use the noC ablation)")
  clusters = safeio.load_json(path, what="clusters", keys=("clusters",))["clusters"]
  if not isinstance(clusters, list) or not all(
    isinstance(c, list) and all(isinstance(i, int) and i >= 0 for i in c) for c in clusters
  ):
    raise CheckpointError(f"{path}: 'clusters' must be lists of setup indices; rerun the cluster step")
  if any(i >= len(ctx.setups) for c in clusters for i in c):
    raise CheckpointError(f"{path} does not match the configured setups; rerun the cluster step")
  return clusters


def parse_ablation(name: str) -> tuple[bool, bool, bool]:
  if name not in T.ABLATIONS:
    raise ConfigError(f"ablation {name!r}: must be one of {list(T.ABLATIONS)}")
  parts = name.split("-")
  return parts[0] == "I", parts[1] == "D", parts[2] == "C"


def distillation(ctx: T.Context, workdir: Path, ablation: str = "I-D-C") -> dict:
  """Trains the SW-CNN under an ablation ("I-D-C" is the full method) into workdir/distill_<ablation>/."""
  cfg = ctx.config
  use_i, use_d, use_c = parse_ablation(ablation)
  stage = f"distill_{ablation}"
  key = jax.random.fold_in(jax.random.key(cfg.seed), 3)
  k_init, k_fit = jax.random.split(key)
  loop = T.loop_config(cfg, cfg.distill, stage, len(ctx.train_ds))
  tx = T.make_tx(cfg, T.total_steps(loop, len(ctx.train_ds)), cfg.distill.lr)
  state = T.init_state(ctx, tx, k_init)
  teacher = init_result(ctx, workdir) if (use_i or use_d) else None
  if use_i:
    params = jax.tree.map(jnp.copy, teacher["params"])  # the step donates the student's buffers
    stats = models_lib.stack_stats(teacher["batch_stats"], len(ctx.setups))
    state = state.replace(params=params, batch_stats=stats, opt_state=tx.init(params))
  fixed = jnp.asarray([ctx.largest, ctx.smallest], jnp.int32)
  if use_c:
    clusters = _load_clusters(ctx, workdir)
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
  state, _ = train_lib.fit(
    state, step, ctx.train_ds, loop, key=k_fit, workdir=workdir, checkpoint_subdir=stage
  )
  all_ids = np.arange(len(ctx.setups))
  stats = T.calibrate_bn(ctx, state.params, state.batch_stats, all_ids, batches=cfg.distill.calibrate_batches)
  correct = T.make_eval_fn(ctx)(state.params, stats, all_ids)
  report.save_npy(Path(workdir) / f"{stage}_correct.npy", correct)
  from common.checkpoint import save_pytree

  save_pytree(Path(workdir) / f"{stage}_final", {"params": state.params, "batch_stats": stats})
  out = {"ablation": ablation, "setups": _setup_rows(ctx, correct, all_ids)}
  T.save_json(workdir, stage, out)
  return out


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


def individual(ctx: T.Context, workdir: Path) -> dict:
  """Trains one model per setup (all, or `individual.subset`), one after another.

  The models share one compiled step (the setup id is an argument), and each checkpoints
  under workdir/individual/<setup>/, so a killed run resumes at the model it was training.
  (Training them side by side with a vmapped step is 2-3x slower on CPU: the per-model
  weights turn every convolution into a grouped one.)
  """
  cfg = ctx.config
  ids = individual_ids(ctx)
  key = jax.random.fold_in(jax.random.key(cfg.seed), 4)
  k_init, k_fit = jax.random.split(key)
  loop = T.loop_config(cfg, cfg.individual, "individual", len(ctx.train_ds))
  tx = T.make_tx(cfg, T.total_steps(loop, len(ctx.train_ds)), cfg.individual.lr)
  teacher = init_result(ctx, workdir) if cfg.individual.from_init else None
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
    state, _ = train_lib.fit(
      state,
      lambda s, b, r, id_arr=id_arr: step(s, b, r, id_arr),
      ctx.train_ds,
      dataclasses.replace(loop, desc=f"individual {name} ({m + 1}/{len(ids)})"),
      key=jax.random.fold_in(k_fit, m),
      workdir=workdir,
      checkpoint_subdir=f"individual/{name}",
    )
    correct.append(np.asarray(evaluate(state.params, state.batch_stats, [int(i)]))[0])
    rows.append({"id": int(i), "name": name, "accuracy": float(correct[-1].mean())})
  # [model, image], rows as `setups`
  report.save_npy(Path(workdir) / "individual_correct.npy", np.stack(correct))
  out = {"setups": rows, "all_setups": len(ids) == len(ctx.setups)}
  T.save_json(workdir, "individual", out)
  return out


def loss_interval(workdir: Path, ablation: str, ind: dict, *, seed: int = 0) -> dict | None:
  """Mean accuracy loss of an ablation against the individual models with a 95% paired
  bootstrap interval over test images; None when the per-image results are not in `workdir`."""
  sw_path, ind_path = (
    Path(workdir) / f"distill_{ablation}_correct.npy",
    Path(workdir) / "individual_correct.npy",
  )
  if not (sw_path.exists() and ind_path.exists()):
    return None
  sw = safeio.load_array(sw_path, what="per-image results", shape=(None, None))
  own = safeio.load_array(ind_path, what="per-image results", shape=(None, None))
  ids = [r["id"] for r in ind["setups"]]
  if own.shape[0] != len(ids) or sw.shape[-1] != own.shape[-1]:
    return None  # from another run or config
  return stats.paired_bootstrap(own, sw[ids], seed=seed)


def accuracy_loss(sw: dict, ind: dict) -> dict:
  """SW-CNN minus individual top-1 error over the setups both have: max / min / mean (and per setup)."""
  sw_acc = {r["name"]: r["accuracy"] for r in sw["setups"]}
  per = {r["name"]: r["accuracy"] - sw_acc[r["name"]] for r in ind["setups"] if r["name"] in sw_acc}
  if not per:
    raise CheckpointError("the SW-CNN and the individual models share no setup")
  v = np.asarray(list(per.values()))
  return {"max": float(v.max()), "min": float(v.min()), "mean": float(v.mean()), "per_setup": per}
