"""A stock Triton server on a model repository: NVIDIA's `tritonserver` (the one the
`nvidia-pytriton` wheel ships, Python backend only) with each repository model bound as a Python
callable that runs its `model.onnx` in onnxruntime, so that the device runtime and the
benchmarks can be held against Triton itself.

  <python with nvidia-pytriton> -m common.serving.triton --repository DIR [--host 127.0.0.1 --port 0 \
      --http_port 0]

prints `serving N models on HOST:PORT (gRPC) and HOST:M (HTTP)` once ready, like `edgeinfer
serve`, and stops on SIGTERM. nvidia-pytriton 0.7 needs numpy < 2 and the project's JAX needs
numpy >= 2, so this runs in an interpreter of its own (`pip install -r
common/serving/triton-requirements.txt` in a second virtual environment; `start_triton` in
common.serving.process starts it). It imports nothing from the project but the repository
loader (numpy, onnxruntime, protobuf and tritonclient, which pytriton brings). The Python
backend's stub links the system libpython3.x; an interpreter of another build (pyenv) needs
its own LIBDIR first on LD_LIBRARY_PATH, which this sets before the server starts.

pytriton's workspace (a copy of the server and the proxies' Unix sockets, whose paths may not pass
107 bytes) goes to a fresh short folder under the temporary directory, not under $HOME, and is
removed on exit. Should the server not be ready within --startup_timeout seconds, the tail of
tritonserver's own log is written to stderr and the launcher exits with status 1, so the caller
sees why.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import signal
import socket
import sys
import sysconfig
import tempfile
import threading
import traceback
from pathlib import Path


def _free_ports(host: str, n: int) -> list[int]:
  """`n` distinct free ports (all held open until all are picked, so none repeats)."""
  with contextlib.ExitStack() as stack:
    socks = [stack.enter_context(socket.socket()) for _ in range(n)]
    for s in socks:
      s.bind((host, 0))
    return [s.getsockname()[1] for s in socks]


def infer_fn(model):
  """pytriton's callable for one repository model: every request through its onnxruntime session."""

  def infer(requests):
    return [
      dict(zip([o.name for o in model.outputs], model.run(dict(r.data)), strict=True)) for r in requests
    ]

  return infer


def bind(triton, models: dict) -> None:
  """Every version of every model of `repository.load_repository` bound with full shapes (no batching)."""
  import numpy as np
  from pytriton.model_config import ModelConfig, Tensor

  from common.serving import repository

  for versions in models.values():
    for m in versions.values():
      triton.bind(
        model_name=m.name,
        model_version=int(m.version),
        infer_func=infer_fn(m),
        inputs=[
          Tensor(name=s.name, dtype=np.dtype(repository.NUMPY[s.datatype]), shape=s.shape) for s in m.inputs
        ],
        outputs=[
          Tensor(name=s.name, dtype=np.dtype(repository.NUMPY[s.datatype]), shape=s.shape) for s in m.outputs
        ],
        config=ModelConfig(batching=False),
        strict=True,
      )


def _log_tail(log: Path, why: str) -> None:
  tail = log.read_text(errors="replace").splitlines()[-40:] if log.exists() else ["(no tritonserver log)"]
  print(*tail, why, sep="\n", file=sys.stderr, flush=True)


def _watchdog(ready: threading.Event, timeout_s: float, log: Path) -> None:
  """Exits the process with tritonserver's log tail on stderr unless `ready` is set in time."""
  if ready.wait(timeout_s):
    return
  _log_tail(log, f"the Triton server was not ready within {timeout_s:.0f} s")
  shutil.rmtree(log.parent, ignore_errors=True)
  if os.getsid(0) == os.getpid():  # started in a session of its own: take tritonserver down too
    os.killpg(0, signal.SIGKILL)
  os._exit(1)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m common.serving.triton", description=__doc__.splitlines()[0])
  p.add_argument("--repository", required=True)
  p.add_argument("--host", default="127.0.0.1")
  p.add_argument("--port", type=int, default=0, help="gRPC (0 picks a free one)")
  p.add_argument("--http_port", type=int, default=0, help="HTTP (0 picks a free one)")
  p.add_argument("--startup_timeout", type=float, default=100.0, help="seconds to be ready in, else exit 1")
  a = p.parse_args(argv)
  logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
  home = Path(tempfile.mkdtemp(prefix="pyt-"))
  try:
    return _serve(a, home)
  except Exception as e:  # noqa: BLE001 -- the traceback, then what tritonserver said (quoted by the caller)
    traceback.print_exc()
    _log_tail(home / "tritonserver.log", f"the Triton server failed: {type(e).__name__}: {e}")
    return 1
  finally:
    shutil.rmtree(home, ignore_errors=True)


def _serve(a, home: Path) -> int:
  libdir = sysconfig.get_config_var("LIBDIR")
  os.environ["LD_LIBRARY_PATH"] = os.pathsep.join(x for x in (libdir, os.environ.get("LD_LIBRARY_PATH")) if x)
  os.environ["PYTRITON_HOME"] = str(home)  # read when pytriton is first imported
  from pytriton.triton import Triton, TritonConfig

  from common.serving import repository

  models = repository.load_repository(a.repository)
  free = _free_ports(a.host, 3)
  grpc_port, http_port, metrics_port = a.port or free[0], a.http_port or free[1], free[2]
  config = TritonConfig(
    grpc_address=a.host,
    grpc_port=grpc_port,
    http_address=a.host,
    http_port=http_port,
    metrics_port=metrics_port,
    log_verbose=0,
    log_file=home / "tritonserver.log",
  )
  ready = threading.Event()
  threading.Thread(
    target=_watchdog, args=(ready, a.startup_timeout, home / "tritonserver.log"), daemon=True
  ).start()
  stop = threading.Event()
  for sig in (signal.SIGTERM, signal.SIGINT):
    signal.signal(sig, lambda *_: stop.set())
  with Triton(config=config) as triton:
    bind(triton, models)
    triton.run()
    ready.set()
    print(
      f"serving {len(models)} models on {a.host}:{grpc_port} (gRPC) and {a.host}:{http_port} (HTTP)",
      flush=True,
    )
    stop.wait()
  return 0


if __name__ == "__main__":
  sys.exit(main())
