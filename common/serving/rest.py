"""The Open Inference Protocol's REST form (KServe v2 / Triton HTTP) and Prometheus /metrics.

  GET  /v2/health/live | /v2/health/ready                     200 while serving
  GET  /v2                                                    server metadata
  GET  /v2/models/<m>[/versions/<v>]                          model metadata
  GET  /v2/models/<m>[/versions/<v>]/ready                    200 ready, 404 not
  POST /v2/models/<m>[/versions/<v>]/infer                    JSON tensors, or Triton's binary
                                                              data (Inference-Header-Content-Length)
  GET  /v2/models[/<m>[/versions/<v>]]/stats                  Triton's model statistics
  GET  /metrics                                               Prometheus text (common.serving.metrics)

Validation, the model call and the statistics are `common.serving.core`'s, shared with the
gRPC front end: the same request gets the same message over both, as HTTP 400 (bad request),
404 (no such model or version), 413 (past --max_message_bytes) or 500 with the protocol's
`{"error": message}` body.

Built on aiohttp (its server, an asyncio loop in a thread of the server process): it is
already a dependency of `tritonclient[http]`, and on this machine (2 cores, December 2026) it
answered a 2.4 kB POST 1783 / 3361 times per second from 1 / 4 keep-alive clients, against
1831 / 2071 for starlette 1.10 on uvicorn 0.55 (h11; uvloop changed nothing), a framework and
a server more. The model runs in a thread pool (onnxruntime releases the GIL), so the loop
keeps parsing while models run.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import socket
import threading
import time

import numpy as np
from aiohttp import web

from common.errors import ServingError
from common.serving import core, metrics, repository

log = logging.getLogger("edgeinfer.serve")
HEADER_LENGTH = "Inference-Header-Content-Length"
STATUS = {
  "INVALID_ARGUMENT": 400,
  "NOT_FOUND": 404,
  "RESOURCE_EXHAUSTED": 413,
  "ADMISSION": 429,
  "INTERNAL": 500,
}


def _error(code: str, message: str) -> web.Response:
  return web.json_response({"error": message}, status=STATUS.get(code, 400))


def _data_bytes(t: dict, i: int) -> bytes:
  """inputs[i].data (JSON numbers, nested or flat, row-major) as the bytes of its datatype."""
  dt, shape = t["datatype"], t["shape"]
  if dt not in repository.NUMPY:
    return b""  # the shared validation names the datatype
  try:
    a = np.asarray(t["data"], repository.NUMPY[dt]).reshape(-1)
  except (ValueError, TypeError, OverflowError) as e:
    raise core.bad(f"inputs[{i}].data of {t['name']!r}: not {dt} values ({e})") from None
  if a.size != int(np.prod(shape)):
    raise core.bad(
      f"inputs[{i}].data of {t['name']!r}: {a.size} values, shape {shape} holds {int(np.prod(shape))}"
    )
  return a.tobytes()


def _check_tensor(t, i: int) -> None:
  if not isinstance(t, dict) or not isinstance(t.get("name"), str) or not isinstance(t.get("datatype"), str):
    raise core.bad(f"inputs[{i}]: needs a name, a datatype, a shape and data (or binary_data_size)")
  shape = t.get("shape")
  if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
    raise core.bad(f"inputs[{i}].shape {shape!r} of {t['name']!r}: must be a list of integers >= 0")


def input_tensors(head: dict, binary: bytes) -> list[core.InputTensor]:
  """The request's inputs: each one's `data`, or its `binary_data_size` bytes of the body after
  the JSON header, in order (RequestError unless the sizes add up to the binary part)."""
  inputs = head.get("inputs")
  if not isinstance(inputs, list):
    raise core.bad("inputs: the request needs a list of input tensors")
  out, offset = [], 0
  for i, t in enumerate(inputs):
    _check_tensor(t, i)
    size = (t.get("parameters") or {}).get("binary_data_size")
    if size is not None:
      if not isinstance(size, int) or size < 0 or offset + size > len(binary):
        raise core.bad(
          f"inputs[{i}].parameters.binary_data_size {size!r} of {t['name']!r}: "
          f"{len(binary) - offset} bytes of binary data are left"
        )
      raw, where = binary[offset : offset + size], f"inputs[{i}] binary data"
      offset += size
    elif "data" in t:
      raw, where = _data_bytes(t, i), f"inputs[{i}].data"
    else:
      raise core.bad(f"inputs[{i}] {t['name']!r}: has neither data nor parameters.binary_data_size")
    out.append(core.InputTensor(t["name"], t["datatype"], tuple(t["shape"]), raw, where))
  if offset != len(binary):
    raise core.bad(f"binary data: {len(binary)} bytes after the JSON header, the inputs take {offset}")
  return out


def split_body(body: bytes, header_length: str | None) -> tuple[dict, bytes]:
  """(the JSON header, the binary part) of an infer request body."""
  n = len(body)
  if header_length is not None:
    try:
      n = int(header_length)
    except ValueError:
      n = -1
    if not 0 <= n <= len(body):
      raise core.bad(f"{HEADER_LENGTH} {header_length!r}: must be an integer in [0, {len(body)}]")
  try:
    head = json.loads(body[:n])
  except (ValueError, UnicodeDecodeError) as e:
    raise core.bad(f"the request's JSON header does not parse: {e}") from None
  if not isinstance(head, dict):
    raise core.bad("the request's JSON header must be an object")
  return head, body[n:]


def requested_outputs(head: dict) -> tuple[list[str], dict[str, bool]]:
  """(output names, name -> as binary data); binary by default when `binary_data_output` is set."""
  outputs = head.get("outputs") or []
  default = bool((head.get("parameters") or {}).get("binary_data_output", False))
  if not isinstance(outputs, list) or not all(
    isinstance(o, dict) and isinstance(o.get("name"), str) for o in outputs
  ):
    raise core.bad("outputs: must be a list of {name, parameters}")
  binary = {o["name"]: bool((o.get("parameters") or {}).get("binary_data", default)) for o in outputs}
  return [o["name"] for o in outputs], binary


def infer_response(
  answer: core.Answer, request_id, binary: dict[str, bool], default_binary: bool
) -> web.Response:
  """The answer as JSON, with the outputs asked for as binary data after it."""
  model = answer.model
  head = {
    "model_name": model.name,
    "model_version": model.version,
    "parameters": {"compute_ns": answer.compute_ns},
  }
  if request_id:
    head["id"] = request_id
  outs, blobs = [], []
  for spec, arr in answer.outputs:
    arr = np.ascontiguousarray(arr, repository.NUMPY[spec.datatype])
    o = {"name": spec.name, "datatype": spec.datatype, "shape": list(arr.shape)}
    if binary.get(spec.name, default_binary):
      blobs.append(arr.tobytes())
      o["parameters"] = {"binary_data_size": len(blobs[-1])}
    else:
      o["data"] = arr.reshape(-1).tolist()
    outs.append(o)
  head["outputs"] = outs
  text = json.dumps(head).encode()
  if not blobs:
    return web.Response(body=text, content_type="application/json")
  return web.Response(
    body=b"".join([text, *blobs]),
    headers={HEADER_LENGTH: str(len(text)), "Content-Type": "application/octet-stream"},
  )


class Handlers:
  """The routes over one `core.Core`; model runs go to `pool`."""

  def __init__(self, c: core.Core, pool: concurrent.futures.Executor):
    self.core, self.pool = c, pool

  async def live(self, request):
    return web.Response(status=200)

  async def server_metadata(self, request):
    return web.json_response(
      {"name": core.SERVER_NAME, "version": core.SERVER_VERSION, "extensions": list(core.EXTENSIONS)}
    )

  async def model_metadata(self, request):
    m = request.match_info
    return web.json_response(self.core.metadata(m["model"], m.get("version", "")))

  async def model_ready(self, request):
    m = request.match_info
    self.core.model(m["model"], m.get("version", ""), "name")  # 404 naming the model unless ready
    return web.Response(status=200)

  async def statistics(self, request):
    m = request.match_info
    return web.json_response(self.core.statistics(m.get("model", ""), m.get("version", "")))

  async def metrics(self, request):
    return web.Response(body=self.core.metrics.text(), headers={"Content-Type": metrics.CONTENT_TYPE})

  async def infer(self, request):
    m = request.match_info
    name = m["model"]
    try:
      body = await request.read()
    except web.HTTPRequestEntityTooLarge as e:
      self.core.refused(
        name, "http", "RESOURCE_EXHAUSTED", model_label=name if name in self.core.models else ""
      )
      raise core.RequestError(
        "RESOURCE_EXHAUSTED", f"the request is past --max_message_bytes ({e.text})"
      ) from None
    arrived = time.perf_counter_ns()
    try:
      head, binary = split_body(body, request.headers.get(HEADER_LENGTH))
      tensors = input_tensors(head, binary)
      outputs, as_binary = requested_outputs(head)
    except core.RequestError as e:
      self.core.refused(name, "http", e.code, model_label=name if name in self.core.models else "")
      raise
    answer = await asyncio.get_running_loop().run_in_executor(
      self.pool,
      lambda: self.core.infer(
        name, m.get("version", ""), tensors, outputs, protocol="http", arrived_ns=arrived
      ),
    )
    default = bool((head.get("parameters") or {}).get("binary_data_output", False))
    return infer_response(answer, head.get("id"), as_binary, default)


@web.middleware
async def _errors(request, handler):
  """RequestError and aiohttp's own 4xx (an unknown path, a wrong method) as {"error": ...}."""
  try:
    return await handler(request)
  except core.RequestError as e:
    log.warning("HTTP %s %s %s: %s", request.method, request.path, e.code, e.message)
    return _error(e.code, e.message)
  except web.HTTPException as e:
    if e.status < 400:
      raise
    return web.json_response({"error": f"{request.method} {request.path}: {e.reason}"}, status=e.status)


def make_app(c: core.Core, pool, *, max_message_bytes: int) -> web.Application:
  h = Handlers(c, pool)
  app = web.Application(client_max_size=max_message_bytes, middlewares=[_errors])
  model = "/v2/models/{model}"
  versioned = model + "/versions/{version}"
  app.router.add_get("/v2/health/live", h.live)
  app.router.add_get("/v2/health/ready", h.live)
  app.router.add_get("/v2", h.server_metadata)
  app.router.add_get("/v2/models/stats", h.statistics)
  app.router.add_get("/metrics", h.metrics)
  for base in (model, versioned):
    app.router.add_get(base, h.model_metadata)
    app.router.add_get(base + "/ready", h.model_ready)
    app.router.add_get(base + "/stats", h.statistics)
    app.router.add_post(base + "/infer", h.infer)
  return app


class HttpServer:
  """The REST front end in its own thread and event loop: `start()` binds and serves, `stop()`
  stops accepting and gives in-flight requests up to `grace_s` seconds."""

  def __init__(
    self, c: core.Core, *, host: str, port: int, max_message_bytes: int, workers: int, grace_s: float = 5.0
  ):
    self.core, self.host, self.port, self.grace_s = c, host, port, grace_s
    self.pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="http-infer")
    self.app = make_app(c, self.pool, max_message_bytes=max_message_bytes)
    self.loop = asyncio.new_event_loop()
    self.thread = threading.Thread(target=self.loop.run_forever, name="http", daemon=True)
    self.runner = None

  def _bind(self) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
      sock.bind((self.host, self.port))
    except OSError as e:
      sock.close()
      raise ServingError(
        f"cannot bind {self.host}:{self.port} for HTTP ({e.strerror}); pick another --http_port"
      ) from None
    return sock

  def start(self) -> int:
    """Binds (ServingError if it cannot), starts serving; returns the port."""
    sock = self._bind()

    async def up():
      self.runner = web.AppRunner(
        self.app, access_log=None, handle_signals=False, shutdown_timeout=self.grace_s
      )
      await self.runner.setup()
      await web.SockSite(self.runner, sock).start()

    self.thread.start()
    asyncio.run_coroutine_threadsafe(up(), self.loop).result(30)
    return sock.getsockname()[1]

  def stop(self) -> None:
    if self.runner is not None:
      asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(self.grace_s + 30)
    self.pool.shutdown(wait=True)
    self.loop.call_soon_threadsafe(self.loop.stop)
    self.thread.join(10)
