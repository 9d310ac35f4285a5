"""AgileNN on the serving runtime, with real processes and sockets: the accuracy through server
and device equals the run's split parity figure on the same images (float and int8), every
prediction equals the in-process split inference's; a missed deadline falls back to the local
prediction and is counted; `edgeinfer agile deploy` writes its report over a 1 Mbit/s link."""

import json
import subprocess
import sys

import numpy as np
import pytest

from agile import deploy
from agile import export as agile_export
from common.serving import device as dev
from common.serving.link import Link
from common.serving.process import child_env, start_server, stop_server
from common.traces import Trace

FAST_LINK = Link(Trace("fast", np.asarray([0.0]), np.asarray([1e9]), 10.0))
CONFIG = "agile/configs/quick.py:fast"


@pytest.fixture(scope="module")
def served(agile_fast_run):
  workdir = agile_fast_run[0]
  dep = deploy.load(workdir)
  proc, port = start_server(deploy.write_repository(workdir, dep.meta, dep.codec))
  yield f"127.0.0.1:{port}"
  stop_server(proc)


def _stream(dep, url, *, deadline_s=5.0, fps=100.0):
  client = dev.Client(url)
  client.connect()
  out = deploy.run(dep, client, FAST_LINK, frames=len(dep.images), fps=fps, deadline_s=deadline_s)
  client.close()
  return out


@pytest.mark.parametrize("int8", [False, True], ids=["float", "int8"])
def test_accuracy_through_runtime_equals_split_parity(agile_fast_run, served, int8):
  workdir = agile_fast_run[0]
  dep = deploy.load(workdir, int8=int8)
  m = json.loads((workdir / "final_metrics.json").read_text())["export"]
  assert len(dep.images) == m["parity_images"] == 64
  out = _stream(dep, served)
  s = out["summary"]
  assert s["status"]["ok"] == len(dep.images) and s["fallbacks"] == 0, s
  assert s["accuracy"] == m["int8_split_accuracy" if int8 else "float_split_accuracy"]
  meta = json.loads((workdir / "exports" / "agile_meta.json").read_text())
  kind = "int8" if int8 else "float"
  ref = agile_export.split_inference(
    (workdir / "exports" / f"agile_device_{kind}.tflite").read_bytes(),
    (workdir / "exports" / "agile_remote.onnx").read_bytes(),
    meta,
    dep.images,
  )
  np.testing.assert_array_equal(out["frames"]["prediction"], ref["combined"].argmax(-1))
  assert out["codec"] == json.loads((workdir / "final_metrics.json").read_text())["payload"]["best_codec"]


def test_missed_deadline_answers_with_local_prediction(agile_fast_run, served):
  dep = deploy.load(agile_fast_run[0])
  out = _stream(dep, served, deadline_s=1e-4)
  s = out["summary"]
  assert s["fallbacks"] == len(dep.images) and s["status"]["ok"] == 0, s
  local = np.asarray([dep.device_part(x)[0].argmax() for x in dep.images])
  np.testing.assert_array_equal(out["frames"]["prediction"], local)
  assert s["accuracy"] == float((local == dep.labels).mean())


def _deploy(*args):
  return subprocess.run(
    [sys.executable, "-m", "agile.main", "deploy", f"--config={CONFIG}", *args],
    capture_output=True,
    text=True,
    env=child_env(),
    timeout=300,
  )


def test_deploy_step_on_a_1mbit_link(agile_fast_run, tmp_path):
  csv = tmp_path / "one_mbit.csv"
  csv.write_text("time_s,mbps\n0,1\n60,1\n")
  sets = {"trace": csv, "frames": 32, "fps": 20.0, "out": tmp_path / "rep"}
  r = _deploy(f"--workdir={agile_fast_run[0]}", *(f"--config.deploy.{k}={v}" for k, v in sets.items()))
  assert r.returncode == 0, r.stderr[-2000:]
  assert "split_parity_accuracy=" in r.stdout
  text = (tmp_path / "rep" / "report.md").read_text()
  for needle in ("fallbacks to the local prediction", "latency model", "latency_cdf.png", "1.000 Mbit/s"):
    assert needle in text, needle
  summ = json.loads((tmp_path / "rep" / "summary.json").read_text())
  assert summ["measured"]["frames"] == 32 and summ["predicted"]["link_s"] > 0


def test_missing_exports_is_one_line_exit_2(tmp_path):
  r = _deploy(f"--workdir={tmp_path}")
  assert r.returncode == 2 and "is missing" in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]


def test_garbage_device_beside_a_healthy_one(agile_fast_run, served):
  """A device sending corrupt, oversized and misdeclared SYMBOLS on the same server: each gets
  INVALID_ARGUMENT, the healthy stream beside it answers every frame and keeps parity."""
  import threading
  import zlib

  import tritonclient.grpc as tg
  from tritonclient.utils import InferenceServerException

  workdir = agile_fast_run[0]
  dep = deploy.load(workdir)
  n = int(np.prod(dep.meta["remote_input_shape"][1:]))
  bad = [b"\x78\x9c garbage", zlib.compress(bytes(50 * n)), zlib.compress(bytes(n - 1))]
  stop, errors = threading.Event(), []

  def garbage():
    c = tg.InferenceServerClient(served)
    while not stop.is_set():
      for blob in bad:
        x = tg.InferInput("SYMBOLS", [len(blob)], "UINT8")
        x.set_data_from_numpy(np.frombuffer(blob, np.uint8))
        try:
          c.infer(deploy.MODEL, [x])
          errors.append("answered")
        except InferenceServerException as e:
          errors.append(e.status())
    c.close()

  t = threading.Thread(target=garbage)
  t.start()
  try:
    out = _stream(dep, served, fps=50.0)
  finally:
    stop.set()
    t.join()
  m = json.loads((workdir / "final_metrics.json").read_text())["export"]
  assert out["summary"]["status"]["ok"] == len(dep.images), out["summary"]
  assert out["summary"]["accuracy"] == m["int8_split_accuracy"]
  assert errors and set(errors) == {"StatusCode.INVALID_ARGUMENT"}, set(errors)
