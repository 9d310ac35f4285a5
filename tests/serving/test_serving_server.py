"""The Open Inference Protocol server as a real process on a loopback socket: every malformed
request kind gets an error status naming the field and the next good request succeeds; 16
concurrent streams lose nothing and mix nothing up; SIGTERM lets in-flight requests finish;
bad repositories and a port in use end the command with one line and exit status 2."""

import concurrent.futures as cf
import json
import signal
import socket
import subprocess
import sys
import time

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tg
from tritonclient.grpc import service_pb2, service_pb2_grpc

from common.serving import repository
from common.serving.process import child_env, start_server
from tests.serving.tiny_models import add_model


def _good(url, x=(1, 2, 3, 4), b=0.5, request_id="", client=None):
  c = client or tg.InferenceServerClient(url)
  xi = tg.InferInput("X", [4], "UINT8")
  xi.set_data_from_numpy(np.asarray(x, np.uint8))
  bi = tg.InferInput("B", [4], "FP32")
  bi.set_data_from_numpy(np.full(4, b, np.float32))
  r = c.infer("add", [xi, bi], request_id=request_id, client_timeout=10.0)
  np.testing.assert_array_equal(r.as_numpy("Y"), np.asarray(x, np.float32) + np.float32(b))
  return r


def _request(**kw):
  req = service_pb2.ModelInferRequest(model_name=kw.get("model", "add"), model_version=kw.get("version", ""))
  for name, dt, shape in kw.get("inputs", [("X", "UINT8", [4]), ("B", "FP32", [4])]):
    req.inputs.add(name=name, datatype=dt, shape=shape)
  for raw in kw.get("raw", [bytes(4), bytes(16)]):
    req.raw_input_contents.append(raw)
  return req


BAD = {
  "unknown model": (_request(model="nope"), grpc.StatusCode.NOT_FOUND, "model_name 'nope'"),
  "wrong version": (_request(version="7"), grpc.StatusCode.NOT_FOUND, "model_version '7'"),
  "wrong input name": (
    _request(inputs=[("Z", "UINT8", [4]), ("B", "FP32", [4])]),
    grpc.StatusCode.INVALID_ARGUMENT,
    "inputs[0].name 'Z'",
  ),
  "wrong dtype": (
    _request(inputs=[("X", "FP32", [4]), ("B", "FP32", [4])]),
    grpc.StatusCode.INVALID_ARGUMENT,
    "inputs[0].datatype",
  ),
  "wrong shape": (
    _request(inputs=[("X", "UINT8", [2, 2]), ("B", "FP32", [4])]),
    grpc.StatusCode.INVALID_ARGUMENT,
    "inputs[0].shape",
  ),
  "truncated raw bytes": (
    _request(raw=[bytes(4), bytes(15)]),
    grpc.StatusCode.INVALID_ARGUMENT,
    "raw_input_contents[1]",
  ),
  "missing raw contents": (
    _request(raw=[bytes(4)]),
    grpc.StatusCode.INVALID_ARGUMENT,
    "raw_input_contents has 1",
  ),
  "empty request": (service_pb2.ModelInferRequest(), grpc.StatusCode.INVALID_ARGUMENT, "model_name is empty"),
  "no inputs": (_request(inputs=[], raw=[]), grpc.StatusCode.INVALID_ARGUMENT, "inputs is empty"),
  "oversize message": (_request(raw=[bytes(4), bytes(100 << 10)]), grpc.StatusCode.RESOURCE_EXHAUSTED, ""),
}


@pytest.mark.parametrize("kind", list(BAD))
def test_malformed_request_then_good_one(server, kind):
  req, code, words = BAD[kind]
  with grpc.insecure_channel(server["url"], options=[("grpc.max_send_message_length", 1 << 24)]) as ch:
    stub = service_pb2_grpc.GRPCInferenceServiceStub(ch)
    with pytest.raises(grpc.RpcError) as e:
      stub.ModelInfer(req, timeout=10)
  assert e.value.code() == code, (kind, e.value.code(), e.value.details())
  assert words in e.value.details(), e.value.details()
  _good(server["url"])


def test_garbage_bytes_then_good_request(server):
  host, port = server["url"].split(":")
  with socket.create_connection((host, int(port)), timeout=5) as s:  # not HTTP/2 at all
    s.sendall(b"\x00\xffGET / HTTP/1.1\r\n\r\n" + bytes(range(256)) * 4)
    s.settimeout(2)
    try:
      s.recv(1024)
    except OSError:
      pass
  with grpc.insecure_channel(server["url"]) as ch:  # HTTP/2 and gRPC, but the message is no protobuf
    call = ch.unary_unary("/inference.GRPCInferenceService/ModelInfer")
    with pytest.raises(grpc.RpcError) as e:
      call(b"\xff\xff\xff\xff\x0f garbage", timeout=10)
  assert e.value.code() in (
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.UNKNOWN,
  )
  _good(server["url"])


def test_metadata_readiness_and_statistics(server):
  c = tg.InferenceServerClient(server["url"])
  assert c.is_server_live() and c.is_server_ready()
  assert c.is_model_ready("add") and not c.is_model_ready("nope") and not c.is_model_ready("add", "9")
  meta = c.get_model_metadata("add", as_json=True)
  assert [(t["name"], t["datatype"], t["shape"]) for t in meta["inputs"]] == [
    ("X", "UINT8", ["4"]),
    ("B", "FP32", ["4"]),
  ]
  with pytest.raises(tg.InferenceServerException, match="no such model"):
    c.get_model_metadata("nope")
  r = _good(server["url"], client=c)
  assert r.get_response().parameters["compute_ns"].int64_param > 0
  st = c.get_inference_statistics("add", as_json=True)["model_stats"][0]
  assert int(st["inference_stats"]["success"]["count"]) >= 1


def test_16_concurrent_streams_lose_and_mix_nothing(server):
  def stream(sid):
    c = tg.InferenceServerClient(server["url"])
    for j in range(25):
      r = _good(server["url"], x=(sid, sid, j, 255 - sid), b=float(j), request_id=f"{sid}-{j}", client=c)
      assert r.get_response().id == f"{sid}-{j}"
    c.close()
    return sid

  with cf.ThreadPoolExecutor(16) as ex:
    assert sorted(ex.map(stream, range(16))) == list(range(16))
  t_end, live = time.monotonic() + 10.0, {}  # the server rewrites its statistics file while it serves
  while time.monotonic() < t_end and live.get("models", {}).get("add", {}).get("ok", 0) < 16 * 25:
    time.sleep(0.1)  # every 0.2 s: a loaded machine may take a few rewrites
    live = json.loads(server["stats"].read_text()) if server["stats"].exists() else {}
  assert live["models"]["add"]["ok"] >= 16 * 25 and live["p50_ms"] <= live["p99_ms"]


def test_sigterm_finishes_in_flight_requests(tiny_repo, tmp_path):
  stats = tmp_path / "stats.json"
  proc, port = start_server(tiny_repo, stats=stats)
  c = tg.InferenceServerClient(f"127.0.0.1:{port}")
  x = tg.InferInput("X", [1, 1024], "FP32")
  x.set_data_from_numpy(np.ones((1, 1024), np.float32))
  with cf.ThreadPoolExecutor(1) as ex:
    fut = ex.submit(lambda: c.infer("slow", [x], client_timeout=60.0))
    time.sleep(0.2)  # the request is running (it takes 0.6 s or more on 2 cores)
    proc.send_signal(signal.SIGTERM)
    assert fut.result().as_numpy("Y").shape == (1, 1024)
  assert proc.wait(20) == 0
  assert json.loads(stats.read_text())["requests"] == 1


def _serve_cli(*args):
  return subprocess.run(
    [sys.executable, "-m", "launch.serve", *args],
    capture_output=True,
    text=True,
    env=child_env(),
    timeout=120,
  )


def test_port_in_use_is_one_line_exit_2(tiny_repo, server):
  r = _serve_cli("--repository", str(tiny_repo), "--port", server["url"].split(":")[1])
  assert r.returncode == 2 and "Traceback" not in r.stderr
  assert "cannot bind" in r.stderr.strip().splitlines()[-1]


def test_missing_and_partial_repository_exit_2(tmp_path):
  r = _serve_cli("--repository", str(tmp_path / "none"), "--port", "0")
  assert r.returncode == 2 and "does not exist" in r.stderr and "Traceback" not in r.stderr
  repository.write_model(tmp_path / "repo", "add", add_model())
  (tmp_path / "repo" / "add" / "1" / "model.onnx").unlink()
  r = _serve_cli("--repository", str(tmp_path / "repo"), "--port", "0")
  assert r.returncode == 2 and "partial" in r.stderr and "Traceback" not in r.stderr
  (tmp_path / "repo" / "add" / "config.pbtxt").write_text(
    "name: 'add'\ninput [ { name: 'X' data_type: TYPE_NOPE } ]"
  )
  r = _serve_cli("--repository", str(tmp_path / "repo"), "--port", "0")
  assert r.returncode == 2 and "config.pbtxt" in r.stderr and "Traceback" not in r.stderr


def test_repository_roundtrip_matches_the_onnx_graph(tmp_path):
  repository.write_model(tmp_path, "add", add_model())
  (m,) = repository.load_repository(tmp_path)["add"].values()
  assert [(s.name, s.datatype, s.shape) for s in m.inputs] == [("X", "UINT8", (4,)), ("B", "FP32", (4,))]
  y = m.run({"X": np.asarray([1, 2, 3, 4], np.uint8), "B": np.ones(4, np.float32)})[0]
  np.testing.assert_array_equal(y, [2, 3, 4, 5])
