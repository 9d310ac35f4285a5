"""coinfer on the serving runtime, with real processes and sockets: predictions through server
and device equal the JAX model's (float) and agree with the int8 parity figures; a server killed
mid-stream costs lost frames, the device reconnects and finishes; the quickstart's deploy stage
writes its report beside the simulator's prediction; bad input ends a command with one line, exit 2."""

import json
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from coinfer import deploy
from common.serving import device as dev
from common.serving.link import Link
from common.serving.process import child_env, start_server, stop_server
from common.traces import Trace

FAST_LINK = Link(Trace("fast", np.asarray([0.0]), np.asarray([1e9]), 10.0))
FAST = "--config=coinfer/configs/quick.py:fast"


def _cli(module, *args, timeout=300):
  return subprocess.run(
    [sys.executable, "-m", module, *args], capture_output=True, text=True, env=child_env(), timeout=timeout
  )


@pytest.fixture(scope="module")
def deploy_run(coinfer_fast_run):
  return coinfer_fast_run[0]


@pytest.fixture(scope="module")
def served(deploy_run):
  proc, port = start_server(deploy_run / "exports" / "repository")
  yield f"127.0.0.1:{port}"
  stop_server(proc)


@pytest.fixture(scope="module")
def jax_top1(deploy_run):
  """Top-1 of the JAX model per exported setup on every test image."""
  from coinfer import export as export_lib
  from coinfer import train as T
  from common import app
  from common.checkpoint import load_pytree

  ctx = T.build(app.load_config_file("coinfer/configs/quick.py:fast"))
  variables = load_pytree(deploy_run / "distill_I-D-C_final")
  names = [s.name for s in ctx.setups]
  return {
    n: np.asarray(export_lib.split_fns(ctx, variables, names.index(n))[2](ctx.test_ds.images)).argmax(-1)
    for n in ("N1Q1", "N4Q8")
  }


def _stream(dep, url, setup, frames):
  client = dev.Client(url)
  client.connect()
  stream = deploy.stream_settings(dep, fps=200.0, deadline_s=5.0)
  out = deploy.run(dep, client, FAST_LINK, frames=frames, controller=f"fixed:{setup}", stream=stream)
  client.close()
  assert out["summary"]["status"]["ok"] == frames, out["summary"]
  return np.asarray(out["frames"]["prediction"])


def test_float_predictions_equal_jax(deploy_run, served, jax_top1):
  dep = deploy.load(deploy_run, int8=False)
  n = len(dep.images)
  for setup in ("N1Q1", "N4Q8"):
    np.testing.assert_array_equal(_stream(dep, served, setup, n), jax_top1[setup], err_msg=setup)


def test_int8_predictions_agree_with_parity_figures(deploy_run, served, jax_top1):
  dep = deploy.load(deploy_run, int8=True)
  assert all(dep.int8)
  figures = {
    r["setup"]: r["int8_top1_agreement"]
    for r in json.loads((deploy_run / "export.json").read_text())["setups"]
  }
  n = json.loads((deploy_run / "config.json").read_text())["export"]["parity_images"]
  for setup in ("N1Q1", "N4Q8"):
    agree = float((_stream(dep, served, setup, n) == jax_top1[setup][:n]).mean())
    assert abs(agree - figures[setup]) <= 1.0 / n + 1e-9, (setup, agree, figures[setup])


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_server_killed_mid_stream_device_reconnects_and_finishes(deploy_run, tmp_path):
  repo = deploy_run / "exports" / "repository"
  port = _free_port()
  proc, _ = start_server(repo, port=port)
  out = tmp_path / "device.json"
  args = ["device", FAST, f"--workdir={deploy_run}", f"--config.deploy.server=127.0.0.1:{port}"]
  sets = {"frames": 200, "fps": 20.0, "trace_scale": 100.0, "controller": "fixed:N4Q8", "out": tmp_path}
  args += [f"--config.deploy.{k}={v}" for k, v in sets.items()]
  device = subprocess.Popen(
    [sys.executable, "-m", "coinfer.main", *args],
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
    env=child_env(),
  )
  try:
    assert device.stdout.readline().strip() == "stream started"
    time.sleep(1.0)
    proc.kill()
    proc.wait()
    time.sleep(0.5)
    proc, _ = start_server(repo, port=port)
    assert device.wait(120) == 0, device.stderr.read()[-2000:]
  finally:
    device.kill()
    stop_server(proc)
  rec = json.loads(out.read_text())
  status = rec["frames"]["status"]
  assert len(status) == 200 and rec["summary"]["reconnects"] >= 1
  first_lost = status.index("lost")
  assert status[:first_lost].count("ok") >= 10  # before the kill
  assert "ok" in status[first_lost:] and status[-1] == "ok"  # after the restart, to the end
  assert rec["summary"]["deadline_miss_rate"] > 0


def test_quickstart_deploy_stage_writes_report_beside_simulator(deploy_run, tmp_path):
  """The quickstart's deploy stage (the coinfer app's deploy step, the pacer) on the coinfer stage's exports."""
  from launch.stages import deploy as stage

  (tmp_path / "coinfer").symlink_to(deploy_run)
  out = stage.run(tmp_path / "deploy", fast=True)
  assert out["frames"] == 60 and 0.0 <= out["miss_rate"] <= 1.0 and out["bytes_per_frame"] > 0
  d = tmp_path / "deploy"
  report = (d / "report.md").read_text()
  assert "| deadline-miss rate |" in report and "| bytes per frame |" in report and "simulator" in report
  assert (d / "latency_cdf.png").exists() and (d / "setup_vs_bandwidth.png").exists()
  rec = json.loads((d / "device.json").read_text())
  assert len(rec["frames"]["setup"]) == 60 and rec["controller"] == "mpc" and rec["link"] == "pacer"
  assert json.loads((d / "server_stats.json").read_text())["requests"] >= 60


def test_bad_input_is_one_line_exit_2(deploy_run, tmp_path):
  bad = tmp_path / "bad.csv"
  bad.write_text("0,1.0\n1,abc\n")
  run = f"--workdir={deploy_run}"
  cases = [
    ("launch.deploy", ["coinfer", FAST, run, f"--config.deploy.trace={bad}"], "not numbers"),
    ("launch.deploy", ["coinfer", FAST, f"--workdir={tmp_path / 'empty'}"], "config.json is missing"),
    ("coinfer.main", ["deploy", FAST, run, "--config.deploy.link=carrier-pigeon"], "config.deploy.link"),
    ("coinfer.main", ["deploy", FAST, run, "--config.deploy.trace_scale=0"], "config.deploy.trace_scale"),
    ("coinfer.main", ["device", FAST, run, "--config.deploy.server=nohost"], "HOST:PORT"),
    ("coinfer.main", ["device", FAST, run], "--config.deploy.server"),
    ("launch.deploy", ["subnets", "--workdir=x"], "one of ['agile', 'offload', 'coinfer']"),
    (
      "launch.device",
      [
        "coinfer",
        FAST,
        run,
        f"--config.deploy.server=127.0.0.1:{_free_port()}",
        "--config.deploy.connect_timeout=1",
      ],
      "not reachable",
    ),
  ]
  for module, args, words in cases:
    r = _cli(module, *args)
    assert r.returncode == 2 and "Traceback" not in r.stderr, (module, args, r.stderr[-2000:])
    assert words in r.stderr.strip().splitlines()[-1], r.stderr
