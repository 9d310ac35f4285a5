"""The Open Inference Protocol's REST form and /metrics on a real server process: tritonclient.http
and plain HTTP requests get health, metadata and answers (JSON tensors and Triton's binary data);
a bad request is HTTP 400 / 404 / 413 with the protocol's {"error": ...} body and the same message
as over gRPC; the Prometheus counts move with the requests."""

import concurrent.futures as cf
import json
import signal
import time
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tg
import tritonclient.http as th
from prometheus_client.parser import text_string_to_metric_families

from common.serving.process import start_server

X = np.asarray([1, 2, 3, 4], np.uint8)
B = np.full(4, 0.5, np.float32)


def _http(server, path, body=None, headers=None):
  """(status, body bytes, headers) of one plain HTTP request."""
  req = urllib.request.Request(f"http://{server['http']}{path}", data=body, headers=headers or {})
  try:
    with urllib.request.urlopen(req, timeout=10) as r:
      return r.status, r.read(), r.headers
  except urllib.error.HTTPError as e:
    return e.code, e.read(), e.headers


def _json_request(x=X.tolist(), shape=(4,), dtype="UINT8"):
  return json.dumps(
    {
      "id": "r1",
      "inputs": [
        {"name": "X", "datatype": dtype, "shape": list(shape), "data": x},
        {"name": "B", "datatype": "FP32", "shape": [4], "data": B.tolist()},
      ],
    }
  ).encode()


def test_health_and_metadata(http_server):
  c = th.InferenceServerClient(http_server["http"])
  assert c.is_server_live() and c.is_server_ready()
  assert c.get_server_metadata()["name"] == "edgeinfer"
  assert c.is_model_ready("add") and not c.is_model_ready("nope") and not c.is_model_ready("add", "9")
  meta = c.get_model_metadata("add")
  assert [(t["name"], t["datatype"], t["shape"]) for t in meta["inputs"]] == [
    ("X", "UINT8", [4]),
    ("B", "FP32", [4]),
  ]
  assert meta["outputs"] == [{"name": "Y", "datatype": "FP32", "shape": [4]}]
  status, body, _ = _http(http_server, "/v2/health/live")
  assert status == 200


@pytest.mark.parametrize("binary_in,binary_out", [(True, True), (False, False), (True, False), (False, True)])
def test_infer_json_and_binary_with_tritonclient(http_server, binary_in, binary_out):
  c = th.InferenceServerClient(http_server["http"])
  inputs = [th.InferInput("X", [4], "UINT8"), th.InferInput("B", [4], "FP32")]
  inputs[0].set_data_from_numpy(X, binary_data=binary_in)
  inputs[1].set_data_from_numpy(B, binary_data=binary_in)
  out = [th.InferRequestedOutput("Y", binary_data=binary_out)]
  r = c.infer("add", inputs, outputs=out, request_id="q7")
  np.testing.assert_array_equal(r.as_numpy("Y"), X.astype(np.float32) + B)
  resp = r.get_response()
  assert resp["id"] == "q7" and resp["parameters"]["compute_ns"] > 0
  assert ("binary_data_size" in resp["outputs"][0].get("parameters", {})) == binary_out


def test_plain_http_json_infer(http_server):
  status, body, headers = _http(http_server, "/v2/models/add/versions/1/infer", _json_request())
  assert status == 200 and headers["Content-Type"].startswith("application/json")
  out = json.loads(body)
  assert out["model_name"] == "add" and out["id"] == "r1"
  assert out["outputs"] == [{"name": "Y", "datatype": "FP32", "shape": [4], "data": [1.5, 2.5, 3.5, 4.5]}]


def _grpc_details(server, req):
  with grpc.insecure_channel(server["url"]) as ch:
    stub = tg.service_pb2_grpc.GRPCInferenceServiceStub(ch)
    with pytest.raises(grpc.RpcError) as e:
      stub.ModelInfer(req, timeout=10)
  return e.value.code(), e.value.details()


def _grpc_request(model="add", shape=(4,), dtype="UINT8"):
  req = tg.service_pb2.ModelInferRequest(model_name=model)
  req.inputs.add(name="X", datatype=dtype, shape=list(shape))
  req.inputs.add(name="B", datatype="FP32", shape=[4])
  req.raw_input_contents.extend([X.tobytes(), B.tobytes()])
  return req


def test_bad_requests_are_400_and_404_with_the_grpc_message(http_server):
  cases = [  # (path, body, HTTP status, gRPC request, gRPC code)
    (
      "/v2/models/add/infer",
      _json_request(shape=(2, 2)),
      400,
      _grpc_request(shape=(2, 2)),
      "INVALID_ARGUMENT",
    ),
    (
      "/v2/models/add/infer",
      _json_request(dtype="FP32"),
      400,
      _grpc_request(dtype="FP32"),
      "INVALID_ARGUMENT",
    ),
    ("/v2/models/nope/infer", _json_request(), 404, _grpc_request(model="nope"), "NOT_FOUND"),
  ]
  for path, body, status, req, code in cases:
    got, text, headers = _http(http_server, path, body)
    assert got == status and headers["Content-Type"].startswith("application/json"), (path, got, text)
    grpc_code, details = _grpc_details(http_server, req)
    assert json.loads(text) == {"error": details} and grpc_code.name == code, (text, details)
  for path, body, words in [
    ("/v2/models/add/infer", b"{not json", "does not parse"),
    ("/v2/models/add/infer", _json_request(x=[1, 2, 3]), "3 values"),
    ("/v2/models/add/versions/9/infer", _json_request(), "model_version '9'"),
    ("/v2/models/nope/ready", None, "nope"),
    ("/v2/nothing/here", None, "/v2/nothing/here"),
  ]:
    got, text, _ = _http(http_server, path, body)
    assert got in (400, 404) and words in json.loads(text)["error"], (path, got, text)


def test_binary_data_sizes_must_add_up_and_oversize_is_413(http_server):
  head = {"parameters": {"binary_data_output": True}, "inputs": []}
  head["inputs"].append(
    {"name": "X", "datatype": "UINT8", "shape": [4], "parameters": {"binary_data_size": 4}}
  )
  head["inputs"].append(
    {"name": "B", "datatype": "FP32", "shape": [4], "parameters": {"binary_data_size": 16}}
  )
  text = json.dumps(head).encode()
  hdr = {"Inference-Header-Content-Length": str(len(text)), "Content-Type": "application/octet-stream"}
  status, body, headers = _http(http_server, "/v2/models/add/infer", text + X.tobytes() + B.tobytes(), hdr)
  n = int(headers["Inference-Header-Content-Length"])
  assert status == 200 and json.loads(body[:n])["outputs"][0]["parameters"] == {"binary_data_size": 16}
  np.testing.assert_array_equal(np.frombuffer(body[n:], np.float32), X.astype(np.float32) + B)
  status, body, _ = _http(http_server, "/v2/models/add/infer", text + X.tobytes() + B.tobytes()[:-1], hdr)
  assert status == 400 and "binary_data_size 16" in json.loads(body)["error"]
  status, body, _ = _http(http_server, "/v2/models/add/infer", text + X.tobytes() + B.tobytes() + b"x", hdr)
  assert status == 400 and "binary data" in json.loads(body)["error"]
  status, body, _ = _http(http_server, "/v2/models/add/infer", text + bytes(100 << 10), hdr)
  assert status == 413 and "max_message_bytes" in json.loads(body)["error"]


def _samples(server) -> dict:
  status, body, headers = _http(server, "/metrics")
  assert status == 200 and headers["Content-Type"].startswith("text/plain")
  out = {}
  for fam in text_string_to_metric_families(body.decode()):
    for s in fam.samples:
      out[(s.name, tuple(sorted(s.labels.items())))] = s.value
  return out


def test_metrics_move_with_requests(http_server):
  def key(name, **labels):
    return (name, tuple(sorted(labels.items())))

  ok_http = key("edgeinfer_requests_total", model="add", protocol="http", status="ok")
  ok_grpc = key("edgeinfer_requests_total", model="add", protocol="grpc", status="ok")
  refused = key("edgeinfer_refusals_total", model="add", protocol="http", reason="INVALID_ARGUMENT")
  hist = key("edgeinfer_request_duration_seconds_count", model="add", protocol="http")
  queue = key("edgeinfer_queue_duration_seconds_count", model="add", protocol="http")
  before = _samples(http_server)
  for _ in range(3):
    assert _http(http_server, "/v2/models/add/infer", _json_request())[0] == 200
  assert _http(http_server, "/v2/models/add/infer", _json_request(shape=(2, 2)))[0] == 400
  c = tg.InferenceServerClient(http_server["url"])
  inputs = [tg.InferInput("X", [4], "UINT8"), tg.InferInput("B", [4], "FP32")]
  inputs[0].set_data_from_numpy(X)
  inputs[1].set_data_from_numpy(B)
  c.infer("add", inputs)
  after = _samples(http_server)
  assert after[ok_http] - before.get(ok_http, 0) == 3
  assert after[hist] - before.get(hist, 0) == 3 and after[queue] - before.get(queue, 0) == 3
  assert after[refused] - before.get(refused, 0) == 1
  assert after[ok_grpc] - before.get(ok_grpc, 0) == 1


def test_statistics_over_http(http_server):
  c = th.InferenceServerClient(http_server["http"])
  before = c.get_inference_statistics("add")["model_stats"][0]["inference_stats"]["success"]["count"]
  for _ in range(2):
    assert _http(http_server, "/v2/models/add/infer", _json_request())[0] == 200
  st = c.get_inference_statistics("add")["model_stats"][0]
  assert st["name"] == "add" and st["inference_stats"]["success"]["count"] == before + 2
  every = c.get_inference_statistics()["model_stats"]
  assert sorted(s["name"] for s in every) == ["add", "slow"]


def test_sigterm_finishes_in_flight_http_request(tiny_repo):
  proc, _ = start_server(tiny_repo, http_port=0)
  body = json.dumps({"inputs": [{"name": "X", "datatype": "FP32", "shape": [1, 1024], "data": [1.0] * 1024}]})
  server = {"http": f"127.0.0.1:{proc.http_port}"}
  with cf.ThreadPoolExecutor(1) as ex:
    fut = ex.submit(lambda: (*_http(server, "/v2/models/slow/infer", body.encode()), time.monotonic()))
    time.sleep(0.1)  # the request is running (it takes 0.6 s or more on 2 cores)
    signalled = time.monotonic()  # before the signal: the answer may come before this thread runs again
    proc.send_signal(signal.SIGTERM)
    status, text, _, answered = fut.result()
  assert status == 200 and json.loads(text)["outputs"][0]["shape"] == [1, 1024]
  assert answered > signalled  # it was in flight when the signal came
  assert proc.wait(20) == 0
