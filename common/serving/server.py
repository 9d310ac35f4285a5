"""An Open Inference Protocol v2 (KServe / Triton) gRPC server over a model repository.

Built on the servicer that tritonclient generates from Triton's grpc_service.proto
(`inference.GRPCInferenceService`): ServerLive, ServerReady, ServerMetadata, ModelReady,
ModelMetadata, ModelStatistics and ModelInfer with `raw_input_contents`. The validation, the
model call and the statistics are `common.serving.core` (shared with the HTTP front end,
`common.serving.http`): a bad request gets INVALID_ARGUMENT or NOT_FOUND with a message naming
the field, one log line, and the server goes on. grpcio enforces the maximum message size
(RESOURCE_EXHAUSTED). Each answer carries the model's compute time in its parameters
(`compute_ns`), which the device uses to split its latency.
"""

from __future__ import annotations

import logging
import time
from concurrent import futures

import grpc
import numpy as np
from google.protobuf import json_format
from tritonclient.grpc import service_pb2, service_pb2_grpc

from common.errors import ServingError
from common.serving import core, repository

log = logging.getLogger("edgeinfer.serve")
DEFAULT_MAX_MESSAGE_BYTES = 4 << 20
SERVER_NAME = core.SERVER_NAME
CODES = {
  "INVALID_ARGUMENT": grpc.StatusCode.INVALID_ARGUMENT,
  "NOT_FOUND": grpc.StatusCode.NOT_FOUND,
  "INTERNAL": grpc.StatusCode.INTERNAL,
  "ADMISSION": grpc.StatusCode.RESOURCE_EXHAUSTED,  # refused by the switch's bucket (admission.py)
}


def input_tensors(req) -> list[core.InputTensor]:
  """The request's inputs with their `raw_input_contents` (RequestError unless every input has them)."""
  if req.inputs and len(req.raw_input_contents) != len(req.inputs):
    raise core.bad(
      f"raw_input_contents has {len(req.raw_input_contents)} entries for {len(req.inputs)} inputs "
      "(send every input as raw_input_contents)"
    )
  return [
    core.InputTensor(t.name, t.datatype, tuple(t.shape), raw, f"raw_input_contents[{i}]")
    for i, (t, raw) in enumerate(zip(req.inputs, req.raw_input_contents, strict=True))
  ]


class Servicer(service_pb2_grpc.GRPCInferenceServiceServicer):
  def __init__(self, models_or_core):
    self.core = models_or_core if isinstance(models_or_core, core.Core) else core.Core(models_or_core)
    self.models, self.stats = self.core.models, self.core.stats

  def _fail(self, context, method: str, e: core.RequestError, model: str = "-"):
    log.warning("%s %s %s: %s", method, model, e.code, e.message)
    context.abort(CODES[e.code], e.message)

  def ServerLive(self, request, context):
    return service_pb2.ServerLiveResponse(live=True)

  def ServerReady(self, request, context):
    return service_pb2.ServerReadyResponse(ready=True)

  def ServerMetadata(self, request, context):
    return service_pb2.ServerMetadataResponse(
      name=core.SERVER_NAME, version=core.SERVER_VERSION, extensions=list(core.EXTENSIONS)
    )

  def ModelReady(self, request, context):
    return service_pb2.ModelReadyResponse(ready=self.core.ready(request.name, request.version))

  def ModelMetadata(self, request, context):
    try:
      meta = self.core.metadata(request.name, request.version)
    except core.RequestError as e:
      return self._fail(context, "ModelMetadata", e, request.name or "-")
    return json_format.ParseDict(meta, service_pb2.ModelMetadataResponse())

  def ModelStatistics(self, request, context):
    try:
      stats = self.core.statistics(request.name, request.version)
    except core.RequestError as e:
      return self._fail(context, "ModelStatistics", e, request.name or "-")
    return json_format.ParseDict(stats, service_pb2.ModelStatisticsResponse())

  def ModelInfer(self, request, context):
    arrived = time.perf_counter_ns()
    name = request.model_name or "-"
    try:
      tensors = input_tensors(request)
    except core.RequestError as e:
      self.core.refused(name, "grpc", e.code)
      return self._fail(context, "ModelInfer", e, name)
    try:
      answer = self.core.infer(
        request.model_name,
        request.model_version,
        tensors,
        [o.name for o in request.outputs],
        protocol="grpc",
        arrived_ns=arrived,
        metric=request.parameters["metric"].double_param if "metric" in request.parameters else None,
      )
    except core.RequestError as e:
      return self._fail(context, "ModelInfer", e, name)
    model = answer.model
    resp = service_pb2.ModelInferResponse(model_name=model.name, model_version=model.version, id=request.id)
    resp.parameters["compute_ns"].int64_param = answer.compute_ns
    for spec, arr in answer.outputs:
      arr = np.ascontiguousarray(arr, repository.NUMPY[spec.datatype])
      resp.outputs.add(name=spec.name, datatype=spec.datatype, shape=arr.shape)
      resp.raw_output_contents.append(arr.tobytes())
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
  servicer = Servicer(models if isinstance(models, core.Core) else core.Core(models, workers=workers))
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
