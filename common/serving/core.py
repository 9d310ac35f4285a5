"""What the gRPC and the HTTP front ends of the server share: the models, one validation of an
inference request, one model call, the statistics and the Prometheus metrics.

A front end turns its request into `InputTensor`s (name, datatype, shape, bytes, and where in
its own request the bytes came from, so that an error names the field the client sent) and
calls `Core.infer`; a bad request raises `RequestError` with the protocol's status name
(INVALID_ARGUMENT, NOT_FOUND, INTERNAL), which each front end maps to its own status (gRPC
codes; HTTP 400 / 404 / 500 with `{"error": message}`). The model runs while holding one of
`workers` execution slots shared by both front ends; the wait for a slot is the queue time.
"""

from __future__ import annotations

import collections
import dataclasses
import threading
import time

import numpy as np

from common.errors import ServingError
from common.serving import codecs, repository
from common.serving.metrics import Metrics

SERVER_NAME = "edgeinfer"
SERVER_VERSION = "1"
EXTENSIONS = ("statistics", "binary_tensor_data")  # not model_repository: no index, load or unload


class RequestError(Exception):
  """A request the server refuses: `code` is the protocol's status name, `message` says why."""

  def __init__(self, code: str, message: str):
    super().__init__(message)
    self.code, self.message = code, message


def bad(message: str) -> RequestError:
  return RequestError("INVALID_ARGUMENT", message)


@dataclasses.dataclass(frozen=True)
class InputTensor:
  name: str
  datatype: str
  shape: tuple[int, ...]
  raw: bytes  # the tensor's bytes, row-major (for a codec input: the compressed stream)
  where: str  # the request field the bytes came from, e.g. raw_input_contents[1] or inputs[1].data


@dataclasses.dataclass(frozen=True)
class Answer:
  model: repository.Model
  outputs: list[tuple[repository.TensorSpec, np.ndarray]]  # the requested outputs, in model order
  compute_ns: int


class Stats:
  """Request counts and latencies (the last 100k) per model, for --stats and model statistics."""

  def __init__(self):
    self.lock = threading.Lock()
    self.ok = collections.Counter()
    self.failed = collections.Counter()
    self.compute_ns = collections.Counter()
    self.queue_ns = collections.Counter()
    self.latency_s = collections.defaultdict(lambda: collections.deque(maxlen=100_000))

  def record(self, model: str, ok: bool, latency_s: float, compute_ns: int = 0, queue_ns: int = 0):
    with self.lock:
      (self.ok if ok else self.failed)[model] += 1
      self.compute_ns[model] += compute_ns
      self.queue_ns[model] += queue_ns
      if ok:
        self.latency_s[model].append(latency_s)

  def summary(self) -> dict:
    with self.lock:
      names = sorted(set(self.ok) | set(self.failed))
      out = {
        "requests": sum(self.ok.values()) + sum(self.failed.values()),
        "failed": sum(self.failed.values()),
      }
      every = [x for n in names for x in self.latency_s[n]]
      out["models"] = {
        n: {"ok": self.ok[n], "failed": self.failed[n], **_percentiles(self.latency_s[n])} for n in names
      }
      out.update(_percentiles(every))
      return out


def _percentiles(xs) -> dict:
  if not xs:
    return {}
  a = np.asarray(xs) * 1e3
  return {f"p{q}_ms": float(np.percentile(a, q)) for q in (50, 90, 99)}


def check_inputs(model: repository.Model, tensors: list[InputTensor], outputs: list[str]) -> dict:
  """The feeds of `model` from `tensors` (RequestError naming the field for anything wrong)."""
  specs = {s.name: s for s in model.inputs}
  if not tensors:
    raise bad(f"inputs is empty: {model.name} takes {sorted(specs)}")
  feeds = {}
  for i, t in enumerate(tensors):
    if t.name not in specs:
      raise bad(f"inputs[{i}].name {t.name!r}: {model.name} has no such input (inputs {sorted(specs)})")
    if t.name in feeds:
      raise bad(f"inputs[{i}].name {t.name!r}: given twice")
    s = specs[t.name]
    if t.datatype != s.datatype:
      raise bad(f"inputs[{i}].datatype {t.datatype!r} of {t.name!r}: must be {s.datatype!r}")
    feeds[t.name] = _feed(model, s, t, i)
  missing = sorted(set(specs) - set(feeds))
  if missing:
    raise bad(f"inputs: missing {missing}")
  known = {o.name for o in model.outputs}
  for j, name in enumerate(outputs):
    if name not in known:
      raise bad(f"outputs[{j}].name {name!r}: {model.name} has no such output (outputs {sorted(known)})")
  return feeds


def _feed(model: repository.Model, s: repository.TensorSpec, t: InputTensor, i: int) -> np.ndarray:
  raw = t.raw
  if model.codec and model.codec[1] == t.name:  # sent compressed: UINT8 [its length]
    if tuple(t.shape) != (len(raw),):
      raise bad(f"inputs[{i}].shape {list(t.shape)} of {t.name!r}: must be [{len(raw)}] (its bytes)")
    try:
      raw = codecs.decompress(model.codec[0], raw, s.nbytes)
    except ServingError as e:
      raise bad(f"inputs[{i}] {t.name!r}: {e}") from None
    return np.frombuffer(raw, np.uint8).reshape(s.shape)
  if tuple(t.shape) != s.shape:
    raise bad(f"inputs[{i}].shape {list(t.shape)} of {t.name!r}: must be {list(s.shape)}")
  if len(raw) != s.nbytes:
    raise bad(f"{t.where} of {t.name!r}: {len(raw)} bytes, must be {s.nbytes}")
  return np.frombuffer(raw, repository.NUMPY[s.datatype]).reshape(s.shape)


class Core:
  """The served models and everything both front ends do with them (thread-safe)."""

  def __init__(self, models: dict[str, dict[str, repository.Model]], *, workers: int = 16, admission=None):
    self.models = models
    self.admission = dict(admission or {})  # model name -> common.serving.admission.Bucket
    self.stats = Stats()
    self.metrics = Metrics()
    self.slots = threading.BoundedSemaphore(workers)

  def model(self, name: str, version: str = "", field: str = "model_name") -> repository.Model:
    if not name:
      raise bad(f"{field} is empty")
    if name not in self.models:
      raise RequestError("NOT_FOUND", f"{field} {name!r}: no such model (serving {sorted(self.models)})")
    versions = self.models[name]
    if not version:
      return versions[max(versions, key=int)]
    if version not in versions:
      raise RequestError(
        "NOT_FOUND", f"model_version {version!r} of {name!r}: not loaded (versions {sorted(versions)})"
      )
    return versions[version]

  def ready(self, name: str, version: str = "") -> bool:
    try:
      self.model(name, version, "name")
    except RequestError:
      return False
    return True

  def metadata(self, name: str, version: str = "") -> dict:
    """The protocol's model metadata (JSON form; shapes as integers)."""
    m = self.model(name, version, "name")

    def tensors(specs):
      return [{"name": s.name, "datatype": s.datatype, "shape": list(s.shape)} for s in specs]

    return {
      "name": m.name,
      "versions": sorted(self.models[m.name], key=int),
      "platform": "onnxruntime_onnx",
      "inputs": tensors(m.inputs),
      "outputs": tensors(m.outputs),
    }

  def statistics(self, name: str = "", version: str = "") -> dict:
    """Triton's model statistics (the JSON form of ModelStatisticsResponse) of one or every model."""
    names = [self.model(name, version, "name").name] if name else sorted(self.models)
    s, out = self.stats, []
    with s.lock:
      for n in names:
        ok, ns = s.ok[n], int(sum(s.latency_s[n]) * 1e9)
        out.append(
          {
            "name": n,
            "version": version or max(self.models[n], key=int),
            "inference_count": ok,
            "execution_count": ok,
            "inference_stats": {
              "success": {"count": ok, "ns": ns},
              "fail": {"count": s.failed[n], "ns": 0},
              "queue": {"count": ok, "ns": s.queue_ns[n]},
              "compute_infer": {"count": ok, "ns": s.compute_ns[n]},
            },
          }
        )
    return {"model_stats": out}

  def infer(
    self,
    name: str,
    version: str,
    tensors: list[InputTensor],
    outputs: list[str],
    *,
    protocol: str,
    arrived_ns: int | None = None,
    metric: float | None = None,
  ) -> Answer:
    """Validates the request, runs the model, records the statistics; RequestError if refused.

    `arrived_ns` (`time.perf_counter_ns()` when the front end had the request; default now) starts
    the request's latency and queue time (until its model run starts); `metric` (the request's
    parameter of that name) is what a smart switch's policy judges (`admission.Bucket.take`)."""
    t0 = time.perf_counter_ns() if arrived_ns is None else arrived_ns
    label = name if name in self.models else ""  # no metric label per unknown name a client makes up
    try:
      model = self.model(name, version)
      feeds = check_inputs(model, tensors, outputs)
    except RequestError as e:
      self.refused(name or "-", protocol, e.code, model_label=label)
      raise
    gate = self.admission.get(model.name)
    if gate is not None and not gate.take(metric):
      self.refused(name, protocol, "RESOURCE_EXHAUSTED", model_label=label)
      raise RequestError(
        "ADMISSION", f"model {name}: the switch's bucket or policy refused it (p = {gate.p} units)"
      )
    with self.slots:
      q = time.perf_counter_ns()
      try:
        results = model.run(feeds)
      except Exception as e:  # noqa: BLE001 - onnxruntime's own error types: answered, logged, counted
        self.refused(name, protocol, "INTERNAL", model_label=label)
        raise RequestError("INTERNAL", f"model {name} failed: {e}") from None
      compute_ns = time.perf_counter_ns() - q
    wanted = outputs or [o.name for o in model.outputs]
    pairs = [(s, a) for s, a in zip(model.outputs, results, strict=True) if s.name in wanted]
    latency_ns = time.perf_counter_ns() - t0
    self.stats.record(name, True, latency_ns * 1e-9, compute_ns, q - t0)
    self.metrics.answered(label, protocol, latency_ns * 1e-9, (q - t0) * 1e-9, compute_ns * 1e-9)
    return Answer(model, pairs, compute_ns)

  def refused(self, name: str, protocol: str, code: str, *, model_label: str = "") -> None:
    """Counts a request refused with `code` (also used by the front ends for their own refusals)."""
    self.stats.record(name, False, 0.0)
    self.metrics.refused(model_label, protocol, code)
