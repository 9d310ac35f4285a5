"""Rate-limited offloading on the serving runtime: the weak classifier on the device, the strong one
on the server, the MDP or DQN policy deciding under the token bucket in between.

`export_classifiers` restores the run's weak and strong CNNs (their `common.train` checkpoints in
RUN/weak and RUN/strong) and writes the weak one as TFLite (`exports/offload_weak.tflite`) and the
strong one as the ONNX model `offload_strong` of the model repository (`IMAGE` fp32 -> `LOGITS`).

Each frame the device takes the next image of a stream drawn like the simulator's
(`offload.train.make_pool`: i.i.d. or location reset, periodic or Markov arrivals; an image
arrives after the previous one's interval in slots of 1 / fps s), runs the weak TFLite, computes
the offloading metric (calibrated entropy through the fold's metric table), and the policy (the
exported MDP thresholds, or the exported DQN TFLite on the metric history) says whether it wants
to send. The token bucket is `offload.bucket.step`, the simulator's own update. A sent image goes
to the server's strong classifier; an answer that misses the deadline falls back to the weak
prediction (and the token is spent). `predict` runs `offload.simulate` with the same policy on the
same stream, so the two losses differ only where the exported models' float results differ.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np

from common import safeio
from common.errors import CheckpointError, ConfigError
from common.serving import device as dev

MODEL = "offload_strong"
WEAK_FILE = "offload_weak.tflite"
POLICIES = ("mdp", "dqn")


def _need(path: Path, step: str) -> Path:
  if not path.exists():
    raise CheckpointError(f"{path} is missing; {step}")
  return path


def load_config(workdir: Path):
  """The run's config (config.json as a ConfigDict); only digits runs have images to deploy."""
  import ml_collections

  rerun = f"run `edgeinfer offload all --workdir {workdir}` first"
  raw = safeio.load_json(_need(workdir / "config.json", rerun), what="run config", keys=("metrics", "seed"))
  c = ml_collections.ConfigDict(raw)
  if c.metrics.source != "digits":
    raise ConfigError(
      f"{workdir}: config.metrics.source = {c.metrics.source!r} has metrics but no images; "
      "deploy a run with source 'digits'"
    )
  return c


def metric_images(c):
  """The classifier set and the metric images in `offload.classifiers.make_metrics`'s order, and
  each metric image's fold: (cls_ds, held_ds, fold per image, channel mean, std, keys)."""
  import jax

  from common import data

  cc = c.metrics.classifiers
  k_split, k_weak, k_strong, k_fold = jax.random.split(jax.random.key(c.seed), 4)
  train_ds, test_ds = data.load(cc.dataset, data_dir=cc.data_dir or None)
  perm = np.asarray(jax.random.permutation(k_split, len(train_ds)))
  n_cls = int(len(train_ds) * cc.classifier_fraction)
  take = perm[:n_cls]
  cls_ds = data.Dataset(train_ds.images[take], train_ds.labels[take], train_ds.num_classes, cc.dataset)
  rest = perm[n_cls:]
  held = data.Dataset(
    np.concatenate([train_ds.images[rest], test_ds.images]),
    np.concatenate([train_ds.labels[rest], test_ds.labels]),
    train_ds.num_classes,
    cc.dataset,
  )
  fold = np.asarray(jax.random.permutation(k_fold, len(held))) % cc.folds
  mean, std = data.channel_stats(cls_ds)
  return cls_ds, held, fold, mean, std, (k_weak, k_strong)


def _restore(name, widths, cls_ds, held, c, key, workdir: Path, mean, std):
  from offload import classifiers

  ck = workdir / name / "checkpoints"
  if not ck.is_dir() or not any(p.name.isdigit() for p in ck.iterdir()):
    raise CheckpointError(f"no {name} classifier checkpoint in {ck}; run `edgeinfer offload train` first")
  # the classifier's own training entry: with its checkpoint at the last step it only restores
  predict, _ = classifiers.train_one(
    name, widths, cls_ds, held, c.metrics.classifiers, key, workdir, mean, std, False
  )
  return predict


def _identity(opset: int, shape):
  from onnx import TensorProto, helper

  graph = helper.make_graph(
    [helper.make_node("Identity", ["IMAGE"], ["dec/z"])],
    "image",
    [helper.make_tensor_value_info("IMAGE", TensorProto.FLOAT, list(shape))],
    [helper.make_tensor_value_info("dec/z", TensorProto.FLOAT, list(shape))],
  )
  return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def export_classifiers(workdir: str | Path) -> dict:
  """exports/offload_weak.tflite and exports/repository/offload_strong; parity against JAX."""
  from common import export as cexport
  from common.serving import repository, wire

  workdir = Path(workdir)
  c = load_config(workdir)
  cls_ds, held, _, mean, std, (kw, ks) = metric_images(c)
  cc = c.metrics.classifiers
  weak = _restore("weak", cc.widths_weak, cls_ds, held, c, kw, workdir, mean, std)
  strong = _restore("strong", cc.widths_strong, cls_ds, held, c, ks, workdir, mean, std)
  x = np.asarray(held.images[:256], np.float32)
  out = workdir / "exports"
  tfl = cexport.to_tflite(weak, x[:1], name="offload_weak")
  cexport.write_atomic(out / WEAK_FILE, tfl)
  run = cexport.make_tflite_runner(tfl)
  lite = np.concatenate([run(x[i : i + 1])[0] for i in range(len(x))])
  onnx_model = cexport.tflite_to_onnx(cexport.to_tflite(strong, x[:1], name="offload_strong"))
  merged = wire.prepend(lambda opset: _identity(opset, x[:1].shape), onnx_model)
  repository.write_model(out / "repository", MODEL, merged)
  on = np.concatenate([cexport.run_onnx(merged, x[i : i + 1])[0] for i in range(len(x))])
  ref_w, ref_s = np.asarray(weak(x)), np.asarray(strong(x))
  return {
    "weak_tflite_bytes": len(tfl),
    "weak_max_abs_err": float(np.abs(lite - ref_w).max()),
    "strong_max_abs_err": float(np.abs(on - ref_s).max()),
    "strong_top1_agreement": float((on.argmax(-1) == ref_s.argmax(-1)).mean()),
  }


@dataclasses.dataclass
class Exports:
  workdir: Path
  config: object  # the run's ConfigDict
  data: object  # offload.data.MetricsData (test split metric-sorted)
  settings: list  # offload.train.settings
  weak: object  # TFLite runner
  tinv: float
  table: np.ndarray  # [2, bins] entropy -> metric (the fold's `mtog`)
  images: np.ndarray  # the test split's images in the metric-sorted order of `data.test`
  labels: np.ndarray
  metric_check: float  # max |metric from the TFLite - the simulator's metric| over the test split (z units)

  def metric(self, x: np.ndarray) -> tuple[np.ndarray, float]:
    """One image -> (weak logits, z-scored offloading metric), as the simulator's metrics."""
    from offload import metrics as om

    logits = self.weak(x[None])[0][0].astype(np.float64)
    m = float(np.interp(om.entropy(logits[None], self.tinv)[0], self.table[0], self.table[1]))
    return logits, (m - self.data.mean) / self.data.std


def load(workdir: str | Path) -> Exports:
  """The run's metrics, classifiers and policies (CheckpointError names the step to run)."""
  from common import export as cexport
  from offload import pipeline
  from offload import train as otrain

  workdir = Path(workdir)
  c = load_config(workdir)
  d = pipeline.Run(c, workdir, show_progress=False).data()
  mfile = pipeline.metrics_path(c, workdir)
  f = safeio.load_npz(_need(mfile, "run `edgeinfer offload metrics` first"), what="metrics file")
  if "mtog" not in f or "tinv" not in f:
    raise CheckpointError(f"{mfile} has no metric table (mtog, tinv); rerun `edgeinfer offload metrics`")
  table, tinv, raw_ts = np.asarray(f["mtog"], np.float64), float(f["tinv"]), np.asarray(f["metric_ts"])
  step = f"run `edgeinfer offload deploy --config=... --workdir={workdir}` (it exports the classifiers)"
  weak = cexport.make_tflite_runner(_need(workdir / "exports" / WEAK_FILE, step).read_bytes())
  _, held, fold, *_ = metric_images(c)
  idx = np.nonzero(fold == c.metrics.fold)[0]  # the fold's images in metric_ts order (kfold_metrics)
  if len(idx) != len(raw_ts):
    raise CheckpointError(f"{mfile} holds {len(raw_ts)} test metrics, the fold has {len(idx)} images")
  order = np.argsort((raw_ts - d.mean) / d.std, kind="stable")  # offload.data.prepare's sort
  dep = Exports(workdir, c, d, otrain.settings(c), weak, tinv, table, held.images[idx[order]].astype(np.float32),
                   np.asarray(held.labels)[idx[order]], 0.0)  # fmt: skip
  z = np.asarray([dep.metric(x)[1] for x in dep.images])
  dep.metric_check = float(np.abs(z - d.test.metrics).max())
  if dep.metric_check > 1e-3:
    raise CheckpointError(
      f"the weak TFLite's metrics differ from {mfile}'s by up to {dep.metric_check:.3g}; rerun the export"
    )
  return dep


def make_policy(dep: Exports, name: str, setting: int):
  """(want(k, z, n, history) -> bool, the same policy for `offload.simulate`)."""
  from common import export as cexport
  from offload import simulate

  r, b, qpm = dep.settings[setting]
  ex = dep.workdir / "exports"
  step = "rerun `edgeinfer offload simulate` with config.export.enabled"
  if name == "mdp":
    obj = safeio.load_json(
      _need(ex / f"mdp_r{r}_b{b}.json", step), what="MDP thresholds", keys=("threshold",)
    )
    raw = np.asarray([np.inf if v is None else v for v in obj["threshold"]], np.float64)
    if len(raw) != qpm.m + 1:
      raise CheckpointError(f"{ex}/mdp_r{r}_b{b}.json has {len(raw)} states, the bucket {qpm.m + 1}")
    th_z = (raw - dep.data.mean) / dep.data.std
    return (lambda k, z, n, hist: z * dep.data.std + dep.data.mean >= raw[n]), th_z
  if name != "dqn":
    raise ConfigError(f"config.deploy.policy = {name!r}: must be one of {list(POLICIES)} or 'all'")
  if setting != 0:
    raise ConfigError(
      f"config.deploy.setting = {setting}: the exported DQN is setting 0's; use config.deploy.policy = 'mdp' for the others"
    )
  from offload import train as otrain

  net, state = otrain.restore_dqn(dep.config, dep.workdir)
  import jax

  params = jax.tree.map(lambda x: x[0], state.params)
  run = cexport.make_tflite_runner(_need(ex / "dqn_float.tflite", step).read_bytes())
  cfg, s = net.config, net.num_states

  def want(k, z, n, hist):
    zs, ivs = hist
    x = [zs[k - j] if k - j >= 0 else 0.0 for j in range(cfg.nhist1 + 1)]
    if cfg.nhist2 >= 0:
      x += [float(ivs[k - 1 - j]) if k - 1 - j >= 0 else 0.0 for j in range(cfg.nhist2 + 1)]
    qv = run(np.asarray([x], np.float32))[0][0]
    return bool(qv[s + n] >= qv[n])

  return want, simulate.DQNPolicy(params, net)


def draw_stream(dep: Exports, frames: int, seed: int, *, order=None, arrivals=None):
  """One stream (test-split image indices, intervals in slots) drawn as the simulator draws its own."""
  import copy

  import jax

  from offload import train as otrain

  c = copy.deepcopy(dep.config)
  for key, value, allowed in (("order", order, otrain.ORDERS), ("arrivals", arrivals, otrain.ARRIVALS)):
    if value is not None:
      if value not in allowed:
        raise ConfigError(f"config.deploy.{key} = {value!r}: must be one of {list(allowed)}")
      c.stream[key] = value
  key = jax.random.fold_in(otrain.keys(c)["test"], 1000 + seed)
  seq, iv = otrain.streams(c, key, len(dep.data.test.metrics), 1, frames)
  return np.asarray(seq[0]), np.asarray(iv[0]), c


def warm_up(client: dev.Client, x: np.ndarray, n: int = 3) -> None:
  """A few requests before the stream, so that no frame pays the first call's setup (a switch's
  refusal of one is no error: it has warmed the path up to the model's admission)."""
  import grpc

  for _ in range(n):
    try:
      client.infer(dev.Request(MODEL, {"IMAGE": x[None]}, "LOGITS"), timeout_s=10.0)
    except grpc.RpcError as e:
      if e.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
        raise


def _cost(logits: np.ndarray, label: int, ctype: int) -> float:
  from offload import metrics as om

  rank = om.ranks(np.asarray(logits, np.float64)[None], np.asarray([label]))
  return float(om.costs(rank, rank, ctype)[0][0])


def make_step(dep: Exports, want_fn, seq, iv, qpm, ctype: int, *, send_metric: bool = False):
  """The device's per-frame step (weak TFLite, metric, policy, token bucket) and its records; with
  send_metric, a request carries its metric (the parameter `metric` a smart switch judges)."""
  import jax.numpy as jnp

  from offload import bucket

  q, p, m = qpm
  frames = len(seq)
  rec = {k: np.zeros(frames) for k in ("metric", "tokens", "want", "sent", "weak_cost", "device_s")}
  zs: list[float] = []
  state = {"n": m}

  def step(k: int, obs: dev.Observation):
    t = time.perf_counter()
    x = dep.images[seq[k]]
    lw, z = dep.metric(x)
    zs.append(z)
    n = state["n"]
    want = bool(want_fn(k, z, n, (zs, iv)))
    n_next, sent = bucket.step(jnp.int32(n), jnp.bool_(want), jnp.int32(iv[k]), q, p, m)
    state["n"], sent = int(n_next), bool(sent)
    rec["metric"][k], rec["tokens"][k], rec["want"][k], rec["sent"][k] = z, n, want, sent
    rec["weak_cost"][k] = _cost(lw, dep.labels[seq[k]], ctype)
    rec["device_s"][k] = time.perf_counter() - t
    if not sent:
      return None
    par = {"metric": z} if send_metric else {}
    return dev.Request(
      MODEL, {"IMAGE": x[None]}, "LOGITS", setup=1, device_s=rec["device_s"][k], parameters=par
    )

  return step, rec


def _check_stream(dep: Exports, setting: int, frames: int, fps: float, deadline_s: float) -> None:
  if frames < 2 or not fps > 0 or not deadline_s > 0:
    raise ConfigError(
      f"config.deploy: frames {frames}, fps {fps}, deadline {deadline_s}: must be >= 2, > 0, > 0"
    )
  if not 0 <= setting < len(dep.settings):
    raise ConfigError(
      f"config.deploy.setting = {setting}: the run has settings 0..{len(dep.settings) - 1} (config.bucket.rates, .depths)"
    )


def run(dep: Exports, client: dev.Client, link, *, policy: str, setting: int, frames: int, fps: float,
        deadline_s: float, stream_seed: int = 0, order=None, arrivals=None, progress=None) -> dict:  # fmt: skip
  """One stream under one policy over `link`; per-frame records (decision, bucket, answer, loss) and summary."""
  from offload import metrics as om

  _check_stream(dep, setting, frames, fps, deadline_s)
  r, b, qpm = dep.settings[setting]
  want_fn, _ = make_policy(dep, policy, setting)
  seq, iv, c = draw_stream(dep, frames, stream_seed, order=order, arrivals=arrivals)
  warm_up(client, dep.images[seq[0]])
  rtt = client.base_rtt_s()
  summ, frames_out = stream(dep, client, link, want_fn, seq, iv, qpm, om.COSTS[c.metrics.cost], fps=fps,
                            deadline_s=deadline_s, rtt_s=rtt, progress=progress)  # fmt: skip
  stream_info = {"fps": fps, "deadline_s": deadline_s, "seed": stream_seed, "order": c.stream.order,
            "arrivals": c.stream.arrivals}  # fmt: skip
  return {
    "summary": summ,
    "frames": frames_out,
    "policy": policy,
    "setting": {"index": setting, "tr": r, "tb": b, "qpm": list(qpm)},
    "stream": stream_info,
    "rtt_s": rtt,
    "trace": {"name": link.trace.name, "mean_bps": link.trace.mean_bps()},
    "link": link.kind,
    "metric_check": dep.metric_check,
  }


def stream(dep: Exports, client: dev.Client, link, want_fn, seq, iv, qpm, ctype: int, *, fps: float,
           deadline_s: float, rtt_s: float, progress=None, send_metric: bool = False) -> tuple[dict, dict]:  # fmt: skip
  """The stream of images `seq` arriving after intervals `iv` (slots of 1 / fps s) through the
  device's step over `link`: (summary, per-frame records)."""
  times = np.concatenate([[0.0], np.cumsum(iv[:-1])]) / fps  # an image every `interval` slots
  step, rec = make_step(dep, want_fn, seq, iv, qpm, ctype, send_metric=send_metric)
  results = dev.run_stream(client, step, frames=len(seq), fps=fps, deadline_s=deadline_s, link=link,
                           rtt_s=rtt_s, progress=progress, arrivals_s=times)  # fmt: skip
  summ, frames_out = account(dep, results, rec, seq, iv, ctype, qpm[2], deadline_s)
  summ["reconnects"] = client.reconnects
  return summ, frames_out


def account(dep: Exports, results, rec: dict, seq, iv, ctype: int, m: int, deadline_s: float):
  """(summary, per-frame records): each frame's loss, the strong answer's where it came in time."""
  frames = len(seq)
  loss, fell_back = rec["weak_cost"].copy(), np.zeros(frames, bool)
  for res in results:
    if rec["sent"][res.frame]:
      if res.status == "ok":
        loss[res.frame] = _cost(res.output.reshape(-1), dep.labels[seq[res.frame]], ctype)
      else:
        fell_back[res.frame] = True
  summ = dev.summary(results, deadline_s)
  summ.update(
    loss=float(loss.mean()),
    weak_loss=float(rec["weak_cost"].mean()),
    offload_fraction=float(rec["sent"].mean()),
    occupancy=float(rec["tokens"].mean() / m),
    fallbacks=int(fell_back.sum()),
    bytes_per_offload=float(np.mean([x.wire_bytes for x in results if x.wire_bytes] or [0.0])),
  )
  frames_out = {f: [getattr(x, f) for x in results] for f in
                ("status", "arrival_s", "latency_s", "wait_s", "link_s", "server_s", "wire_bytes")}  # fmt: skip
  frames_out.update({k: v.tolist() for k, v in rec.items()})
  frames_out.update(image=seq.tolist(), interval=iv.tolist(), loss=loss.tolist(), fallback=fell_back.tolist())
  return summ, frames_out


def predict(dep: Exports, out: dict) -> dict:
  """`offload.simulate` with the same policy on the same stream (the images and intervals the
  device saw), and the run's own figure on its test streams (results.json)."""
  from offload import simulate

  s = out["setting"]
  seq, iv = np.asarray(out["frames"]["image"])[None], np.asarray(out["frames"]["interval"])[None]
  _, pol = make_policy(dep, out["policy"], s["index"])
  ts = dep.data.test
  sim = simulate.simulate(pol, ts.metrics, ts.rewards, seq, iv, s["tr"], s["tb"])
  weak = float(ts.wcost[seq].mean())
  res = safeio.load_json_if_present(dep.workdir / "results.json", what="simulation results") or {}
  runs = res.get("losses", {}).get(out["policy"])
  return {
    "loss": weak - sim["reward"],
    "weak_loss": weak,
    "offload_fraction": sim["offload_fraction"],
    "occupancy": sim["occupancy"],
    "test_streams_loss": runs[s["index"]] if runs else None,
    "test_streams": res.get("streams"),
  }


def policies(dep: Exports, policy: str, setting: int) -> list[str]:
  """The policies a deploy streams in turn: `all` is every exported one (the DQN is setting 0's)."""
  if policy == "all":
    return list(POLICIES) if setting == 0 else ["mdp"]
  if policy not in POLICIES:
    raise ConfigError(f"config.deploy.policy = {policy!r}: must be one of {list(POLICIES)} or 'all'")
  return [policy]


class OffloadDeployment:
  """offload's `common.serving.runner.Deployment`: one stream per policy, in turn, on the same images;
  with `cameras` > 1 a fleet of camera processes behind the server's switch (`offload.fleet`)."""

  technique = "offload"

  def prepare(self, workdir: Path, settings: dict) -> dict:
    if settings.get("cameras", 1) > 1:  # the multicam step's pick is there, before anything is written
      from offload import fleet

      fleet.strategy_settings(settings, load_config(workdir), workdir)
    return export_classifiers(workdir)

  def fleet(self, workdir: Path, settings: dict, out_dir: Path):
    """cameras > 1: the plan (fleet_plan.json), one device process per camera, the switch's flags."""
    if settings.get("cameras", 1) <= 1:
      return None
    from common.report import write_json
    from common.serving import runner
    from offload import fleet, pipeline

    c = load_config(workdir)
    pl = fleet.plan(c, pipeline.Run(c, workdir, show_progress=False).data(), workdir, settings)
    path = write_json(out_dir / fleet.PLAN_FILE, pl)
    devices = [{**settings, "camera": j, "fleet_plan": str(path)} for j in range(pl["cameras"])]
    return runner.Fleet(devices, fleet.server_flags(MODEL, pl, settings["fps"], out_dir))

  def device(self, workdir: Path, settings: dict, client, link, progress) -> dict:
    s = settings
    if s.get("cameras", 1) > 1:
      if not s.get("fleet"):
        raise ConfigError(
          f"config.deploy.cameras = {s['cameras']}: the device step streams one camera; a fleet runs in the "
          "deploy step (its processes and the server's switch)"
        )
      from offload import fleet

      return fleet.device(load(workdir), client, link, s, progress)
    dep = load(workdir)
    runs = {
      pol: run(dep, client, link, policy=pol, setting=s["setting"], frames=s["frames"], fps=s["fps"],
               deadline_s=s["deadline"], stream_seed=s["stream_seed"], order=s["order"] or None,
               arrivals=s["arrivals"] or None, progress=progress)
      for pol in policies(dep, s["policy"], s["setting"])
    }  # fmt: skip
    return {"policies": runs, "summary": {p: r["summary"] for p, r in runs.items()}}

  def predict(self, workdir: Path, settings: dict, record: dict, trace) -> dict:
    dep = load(workdir)
    if "devices" in record:
      from offload import fleet

      pl = _plan(workdir, settings)
      idx = fleet.streams(dep, pl, settings)
      return {"plan": pl, "frames": settings["frames"], "strategies": fleet.simulate(dep, pl, idx)}
    return {p: predict(dep, out) for p, out in record["policies"].items()}

  def summary(self, record: dict, prediction: dict, info: dict) -> dict:
    from offload import deploy_report, fleet_report

    if "devices" in record:
      pr = prediction
      return fleet_report.summary(record, pr["strategies"], pr["plan"], pr["frames"], info)
    runs = record["policies"]
    return {"measured": record["summary"], "simulator": prediction, "gap": deploy_report.gaps(runs, prediction),
            "export": info}  # fmt: skip

  def report(self, out_dir: Path, record: dict, prediction: dict, trace, server_stats, info: dict) -> Path:
    from offload import deploy_report, fleet_report

    if "devices" in record:
      return fleet_report.write_report(out_dir, self.summary(record, prediction, info), server_stats)
    return deploy_report.write_report(out_dir, record["policies"], prediction, server_stats, info)

  def figures(self, record: dict, prediction: dict) -> dict:
    out = {}
    if "devices" in record:
      from offload import fleet_report

      m = fleet_report.measured(record, prediction["plan"], prediction["frames"])
      for s, v in m["strategies"].items():
        out[f"{s}_loss"], out[f"{s}_sim_loss"] = v["loss"], prediction["strategies"][s]["loss"]
      out["failed_cameras"] = len(m["failed"])
      return out
    for p, r in record["policies"].items():
      out[f"{p}_loss"], out[f"{p}_sim_loss"] = r["summary"]["loss"], prediction[p]["loss"]
    return out


def _plan(workdir: Path, settings: dict) -> dict:
  from offload import fleet

  path = Path(settings["out"] or Path(workdir) / "deploy") / fleet.PLAN_FILE
  return safeio.load_json(path, what="fleet plan", keys=("strategies", "seeds"))


DEPLOYMENT = OffloadDeployment()
