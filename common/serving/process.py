"""Server processes for tests, benchmarks and the deploy runner: `edgeinfer serve` (the
`launch.serve` module) started as a child process, waited for until it serves, and stopped
gracefully; and the stock Triton server of `common.serving.triton` (another interpreter).

  proc, port = start_server(repo, http_port=0)   # proc.http_port: the HTTP port it picked
  ...
  stop_server(proc)
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from common.errors import ServingError

PY = [sys.executable]
ROOT = Path(__file__).resolve().parents[2]  # the checkout: children import the project from here
_READY = re.compile(r"^serving \d+ models on (\S+):(\d+)(?: \(gRPC\) and (\S+):(\d+) \(HTTP\))?")


def child_env() -> dict:
  """This process's environment with the checkout first on PYTHONPATH (and TensorFlow quiet)."""
  env = dict(os.environ)
  env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
  env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  return env


def _wait_ready(proc, timeout_s: float, what: str, tail_lines: int = 1) -> re.Match:
  """The ready line among the process's stdout lines (ServingError with the last `tail_lines` of
  stderr if it does not come in time); the rest of stdout and stderr are drained in the background."""
  box: list[re.Match] = []

  def read():
    for line in proc.stdout:
      if not box and _READY.match(line):
        box.append(_READY.match(line))

  threading.Thread(target=read, daemon=True).start()
  t_end = time.monotonic() + timeout_s
  while not box and proc.poll() is None and time.monotonic() < t_end:
    time.sleep(0.02)
  if not box:
    proc.kill()
    err = [x for x in proc.stderr.read().strip().splitlines() if x.strip()]
    why = "\n".join(err[-tail_lines:]) if err else "no output"
    raise ServingError(f"{what} did not start within {timeout_s:.0f} s: {why}")
  threading.Thread(target=proc.stderr.read, daemon=True).start()  # drain the log
  return box[0]


def start_helper(module: str, args, *, ready: str, what: str, prefix=(), timeout_s: float = 30.0):
  """`python -m module args` (behind `prefix`, e.g. `ip netns exec NS`), waited for until its first
  line of output starts with `ready` (ServingError naming `what` with its stderr otherwise)."""
  proc = subprocess.Popen([*prefix, *PY, "-m", module, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, env=child_env())  # fmt: skip
  line: list[str] = []
  reader = threading.Thread(target=lambda: line.append(proc.stdout.readline()), daemon=True)
  reader.start()
  reader.join(timeout_s)
  if not line or not line[0].startswith(ready):
    proc.kill()
    raise ServingError(f"{what} did not start: {proc.stderr.read().strip()[-300:] or 'no output'}")
  return proc


def start_server(
  repo: Path,
  *,
  host: str = "127.0.0.1",
  port: int = 0,
  http_port: int | None = None,
  prefix=(),
  stats: Path | None = None,
  timeout_s: float = 60.0,
  extra=(),
):
  """Starts `launch.serve` on `repo` and waits for its `serving ... on HOST:PORT` line.

  Args:
    port: the gRPC port (0 picks a free one).
    http_port: also serve HTTP/REST and /metrics on this port (0 picks one); None: gRPC only.
    prefix: a command to run the server under (e.g. `ip netns exec NS`).
    stats: --stats, the JSON file of request counts the server rewrites.
    extra: further flags of `edgeinfer serve`.

  Returns:
    (proc, port): the process (with `proc.http_port`, None without HTTP) and the gRPC port.
  """
  cmd = [*prefix, *PY, "-m", "launch.serve", f"--repository={repo}", f"--host={host}", f"--port={port}"]
  cmd += [f"--http_port={http_port}"] if http_port is not None else []
  cmd += [f"--stats={stats}"] if stats else []
  cmd += list(extra)
  proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env())
  ready = _wait_ready(proc, timeout_s, "the server")
  proc.http_port = int(ready.group(4)) if ready.group(4) else None
  return proc, int(ready.group(2))


def start_triton(
  repo: Path, *, python: str, port: int = 0, http_port: int = 0, timeout_s: float = 180.0, extra=()
):
  """Starts the stock Triton server (`python -m common.serving.triton`, run by `python`, an
  interpreter with nvidia-pytriton) on `repo`; returns (proc, gRPC port) with `proc.http_port`.
  The launcher gives up itself 30 s before `timeout_s` with tritonserver's log on stderr, which
  the ServingError then quotes."""
  cmd = [python, "-m", "common.serving.triton", "--repository", str(repo), "--port", str(port)]
  cmd += ["--http_port", str(http_port), "--startup_timeout", str(max(timeout_s - 30.0, 1.0)), *extra]
  proc = subprocess.Popen(
    cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env(), start_new_session=True
  )
  proc.group = True  # stop_server ends tritonserver with it, should the launcher not stop in time
  try:
    ready = _wait_ready(proc, timeout_s, "the Triton server", tail_lines=40)
  except ServingError:
    with contextlib.suppress(ProcessLookupError):
      os.killpg(proc.pid, signal.SIGKILL)
    raise
  proc.http_port = int(ready.group(4))
  return proc, int(ready.group(2))


def stop_server(proc, timeout_s: float = 10.0) -> None:
  """SIGTERM (in-flight requests finish), then SIGKILL after `timeout_s`."""
  if proc.poll() is None:
    proc.send_signal(signal.SIGTERM)
    try:
      proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
      if getattr(proc, "group", False):
        os.killpg(proc.pid, signal.SIGKILL)
      proc.kill()
      proc.wait()


def run_python(module: str, args, *, prefix=(), timeout_s: float = 3600.0, what: str = "the device") -> None:
  """Runs `python -m module args` (behind `prefix`) to the end; ServingError with its last error line."""
  try:
    r = subprocess.run(
      [*prefix, *PY, "-m", module, *args], capture_output=True, text=True, env=child_env(), timeout=timeout_s
    )
  except subprocess.TimeoutExpired:
    raise ServingError(f"{what} did not finish within {timeout_s:.0f} s") from None
  if r.returncode != 0:
    err = [x for x in r.stderr.strip().splitlines() if x.strip()]
    raise ServingError(f"{what} failed: {err[-1] if err else f'exit status {r.returncode}'}")
