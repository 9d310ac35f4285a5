"""Server and device processes of a deployment: start, wait until ready, stop.

`start_server` runs `edgeinfer serve` (`python -m launch.serve`) on a model repository, optionally
behind a command prefix (`ip netns exec NS` for the tc link), and waits for its
`serving ... on HOST:PORT` line; `stop_server` ends it with SIGTERM (in-flight requests finish).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from common.errors import ServingError

PY = [sys.executable]
ROOT = Path(__file__).resolve().parents[2]


def env() -> dict:
  """The environment of a child process: this checkout first on PYTHONPATH, TensorFlow quiet."""
  out = dict(os.environ)
  out["PYTHONPATH"] = str(ROOT) + (os.pathsep + out["PYTHONPATH"] if out.get("PYTHONPATH") else "")
  out.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  return out


def start_server(
  repo: Path,
  *,
  host: str = "127.0.0.1",
  port: int = 0,
  prefix=(),
  stats: Path | None = None,
  timeout_s: float = 60.0,
  extra=(),
):
  """Starts `launch.serve` and waits for its `serving ... on HOST:PORT` line; returns (proc, port)."""
  cmd = [*prefix, *PY, "-m", "launch.serve", "--repository", str(repo), "--host", host, "--port", str(port)]
  if stats:
    cmd += ["--stats", str(stats)]
  cmd += list(extra)
  proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env())
  line: list[str] = []
  reader = threading.Thread(target=lambda: line.append(proc.stdout.readline()), daemon=True)
  reader.start()
  reader.join(timeout_s)
  if not line or not line[0].startswith("serving"):
    proc.kill()
    err = proc.stderr.read().strip().splitlines()
    raise ServingError(f"the server did not start: {err[-1] if err else 'no output'}")
  threading.Thread(target=proc.stderr.read, daemon=True).start()  # drain the log
  return proc, int(line[0].rsplit(":", 1)[1])


def stop_server(proc, timeout_s: float = 10.0) -> None:
  if proc.poll() is None:
    proc.send_signal(signal.SIGTERM)
    try:
      proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
      proc.kill()
      proc.wait()


def run_python(module: str, args, *, prefix=(), timeout_s: float = 3600.0, what: str = "the device") -> None:
  """Runs `python -m module args` (behind `prefix`) to the end; ServingError with its last error line."""
  try:
    r = subprocess.run(
      [*prefix, *PY, "-m", module, *args], capture_output=True, text=True, env=env(), timeout=timeout_s
    )
  except subprocess.TimeoutExpired:
    raise ServingError(f"{what} did not finish within {timeout_s:.0f} s") from None
  if r.returncode != 0:
    err = [x for x in r.stderr.strip().splitlines() if x.strip()]
    raise ServingError(f"{what} failed: {err[-1] if err else f'exit status {r.returncode}'}")
