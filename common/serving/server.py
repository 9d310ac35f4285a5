"""An Open Inference Protocol v2 (KServe / Triton) gRPC server over a model repository.

Built on the servicer that tritonclient generates from Triton's grpc_service.proto
(`inference.GRPCInferenceService`): ServerLive, ServerReady, ServerMetadata, ModelReady,
ModelMetadata, ModelStatistics and ModelInfer with `raw_input_contents`. Every request is
checked against the model's config (model name and version, input names, datatypes, shapes,
byte lengths); a bad one gets INVALID_ARGUMENT or NOT_FOUND with a message naming the field,
one log line, and the server goes on. grpcio enforces the maximum message size
(RESOURCE_EXHAUSTED). Each answer carries the model's compute time in its parameters
(`compute_ns`), which the device uses to split its latency.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from concurrent import futures

import grpc
import numpy as np
from tritonclient.grpc import service_pb2, service_pb2_grpc

from common.errors import ServingError
from common.serving import repository

log = logging.getLogger("edgeinfer.serve")
DEFAULT_MAX_MESSAGE_BYTES = 4 << 20
SERVER_NAME = "edgeinfer"


class _Stats:
  """Request counts and latencies (the last 100k) per model; thread-safe."""

  def __init__(self):
    self.lock = threading.Lock()
    self.ok = collections.Counter()
    self.failed = collections.Counter()
    self.compute_ns = collections.Counter()
    self.latency_s = collections.defaultdict(lambda: collections.deque(maxlen=100_000))

  def record(self, model: str, ok: bool, latency_s: float, compute_ns: int = 0):
    with self.lock:
      (self.ok if ok else self.failed)[model] += 1
      self.compute_ns[model] += compute_ns
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


class _Abort(Exception):
  def __init__(self, code, message):
    super().__init__(message)
    self.code, self.message = code, message


def _bad(msg):
  return _Abort(grpc.StatusCode.INVALID_ARGUMENT, msg)


class Servicer(service_pb2_grpc.GRPCInferenceServiceServicer):
  def __init__(self, models: dict[str, dict[str, repository.Model]]):
    self.models = models
    self.stats = _Stats()

  # ------------------------------------------------------------ helpers
  def _model(self, name: str, version: str, field: str = "model_name") -> repository.Model:
    if not name:
      raise _bad(f"{field} is empty")
    if name not in self.models:
      raise _Abort(
        grpc.StatusCode.NOT_FOUND, f"{field} {name!r}: no such model (serving {sorted(self.models)})"
      )
    versions = self.models[name]
    if not version:
      return versions[max(versions, key=int)]
    if version not in versions:
      raise _Abort(
        grpc.StatusCode.NOT_FOUND,
        f"model_version {version!r} of {name!r}: not loaded (versions {sorted(versions)})",
      )
    return versions[version]

  def _fail(self, context, method: str, e: _Abort, model: str = "-"):
    log.warning("%s %s %s: %s", method, model, e.code.name, e.message)
    context.abort(e.code, e.message)

  @staticmethod
  def _feeds(model: repository.Model, req) -> dict[str, np.ndarray]:
    specs = {s.name: s for s in model.inputs}
    if not req.inputs:
      raise _bad(f"inputs is empty: {model.name} takes {sorted(specs)}")
    if len(req.raw_input_contents) != len(req.inputs):
      raise _bad(
        f"raw_input_contents has {len(req.raw_input_contents)} entries for {len(req.inputs)} inputs "
        "(send every input as raw_input_contents)"
      )
    feeds = {}
    for i, t in enumerate(req.inputs):
      if t.name not in specs:
        raise _bad(f"inputs[{i}].name {t.name!r}: {model.name} has no such input (inputs {sorted(specs)})")
      if t.name in feeds:
        raise _bad(f"inputs[{i}].name {t.name!r}: given twice")
      s = specs[t.name]
      if t.datatype != s.datatype:
        raise _bad(f"inputs[{i}].datatype {t.datatype!r} of {t.name!r}: must be {s.datatype!r}")
      if tuple(t.shape) != s.shape:
        raise _bad(f"inputs[{i}].shape {list(t.shape)} of {t.name!r}: must be {list(s.shape)}")
      raw = req.raw_input_contents[i]
      if len(raw) != s.nbytes:
        raise _bad(f"raw_input_contents[{i}] of {t.name!r}: {len(raw)} bytes, must be {s.nbytes}")
      feeds[t.name] = np.frombuffer(raw, repository.NUMPY[s.datatype]).reshape(s.shape)
    missing = sorted(set(specs) - set(feeds))
    if missing:
      raise _bad(f"inputs: missing {missing}")
    known = {o.name for o in model.outputs}
    for j, o in enumerate(req.outputs):
      if o.name not in known:
        raise _bad(f"outputs[{j}].name {o.name!r}: {model.name} has no such output (outputs {sorted(known)})")
    return feeds

  # ------------------------------------------------------------ RPCs
  def ServerLive(self, request, context):
    return service_pb2.ServerLiveResponse(live=True)

  def ServerReady(self, request, context):
    return service_pb2.ServerReadyResponse(ready=True)

  def ServerMetadata(self, request, context):
    return service_pb2.ServerMetadataResponse(name=SERVER_NAME, version="1", extensions=["model_repository"])

  def ModelReady(self, request, context):
    try:
      self._model(request.name, request.version, "name")
    except _Abort:
      return service_pb2.ModelReadyResponse(ready=False)
    return service_pb2.ModelReadyResponse(ready=True)

  def ModelMetadata(self, request, context):
    try:
      m = self._model(request.name, request.version, "name")
    except _Abort as e:
      return self._fail(context, "ModelMetadata", e, request.name or "-")
    meta = service_pb2.ModelMetadataResponse
    return meta(
      name=m.name,
      versions=sorted(self.models[m.name], key=int),
      platform="onnxruntime_onnx",
      inputs=[meta.TensorMetadata(name=s.name, datatype=s.datatype, shape=s.shape) for s in m.inputs],
      outputs=[meta.TensorMetadata(name=s.name, datatype=s.datatype, shape=s.shape) for s in m.outputs],
    )

  def ModelStatistics(self, request, context):
    s = self.stats
    out = service_pb2.ModelStatisticsResponse()
    with s.lock:
      for name, versions in self.models.items():
        if request.name and request.name != name:
          continue
        st = out.model_stats.add(name=name, version=max(versions, key=int))
        st.inference_count = s.ok[name]
        st.execution_count = s.ok[name]
        st.inference_stats.success.count = s.ok[name]
        st.inference_stats.success.ns = int(sum(s.latency_s[name]) * 1e9)
        st.inference_stats.fail.count = s.failed[name]
        st.inference_stats.compute_infer.count = s.ok[name]
        st.inference_stats.compute_infer.ns = s.compute_ns[name]
    return out

  def ModelInfer(self, request, context):
    t0 = time.perf_counter()
    name = request.model_name or "-"
    try:
      model = self._model(request.model_name, request.model_version)
      feeds = self._feeds(model, request)
    except _Abort as e:
      self.stats.record(name, False, 0.0)
      return self._fail(context, "ModelInfer", e, name)
    c0 = time.perf_counter_ns()
    try:
      results = model.run(feeds)
    except Exception as e:  # noqa: BLE001 - onnxruntime's own error types; answer, log and go on
      self.stats.record(name, False, 0.0)
      return self._fail(
        context, "ModelInfer", _Abort(grpc.StatusCode.INTERNAL, f"model {name} failed: {e}"), name
      )
    compute = time.perf_counter_ns() - c0
    wanted = [o.name for o in request.outputs] or [o.name for o in model.outputs]
    resp = service_pb2.ModelInferResponse(model_name=model.name, model_version=model.version, id=request.id)
    resp.parameters["compute_ns"].int64_param = compute
    for spec, arr in zip(model.outputs, results, strict=True):
      if spec.name in wanted:
        arr = np.ascontiguousarray(arr, repository.NUMPY[spec.datatype])
        resp.outputs.add(name=spec.name, datatype=spec.datatype, shape=arr.shape)
        resp.raw_output_contents.append(arr.tobytes())
    self.stats.record(name, True, time.perf_counter() - t0, compute)
    return resp


def start(
  models: dict,
  *,
  host: str = "127.0.0.1",
  port: int = 8001,
  max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
  workers: int = 16,
) -> tuple[grpc.Server, Servicer, int]:
  """Starts the server on host:port (0 picks a free port); returns (server, servicer, port)."""
  server = grpc.server(
    futures.ThreadPoolExecutor(max_workers=workers),
    options=[
      ("grpc.max_receive_message_length", max_message_bytes),
      ("grpc.max_send_message_length", max_message_bytes),
      ("grpc.so_reuseport", 0),
    ],
  )
  servicer = Servicer(models)
  service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
  try:
    bound = server.add_insecure_port(f"{host}:{port}")
  except RuntimeError:
    bound = 0
  if not bound:
    raise ServingError(
      f"cannot bind {host}:{port} (in use, or not an address of this machine); pick another --port"
    )
  server.start()
  return server, servicer, bound
