"""Serve a model repository over the Open Inference Protocol v2: gRPC, and HTTP/REST with /metrics.

  edgeinfer serve --repository=runs/quickstart/coinfer/exports/repository
      [--host=127.0.0.1 --port=8001 --http_port=8000 --max_message_bytes=4194304 --workers=16 --grace=5
       --stats=stats.json --stats_every=10]
  python -m launch.serve ...        (the same command)

Prints `serving N models on HOST:PORT` once ready (with --port=0, the port picked), or with
--http_port `serving N models on HOST:PORT (gRPC) and HOST:M (HTTP)`. Without --http_port only
gRPC is served. SIGTERM or Ctrl-C stops it gracefully: no new requests, in-flight ones finish
(up to --grace seconds); the request counts and latency percentiles are logged and, with
--stats, written as JSON (also every --stats_every seconds while serving).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading

from absl import flags

from common import cli
from common.errors import ConfigError

_REPOSITORY = flags.DEFINE_string("repository", None, "the Triton-style model repository to serve")
_HOST = flags.DEFINE_string("host", "127.0.0.1", "the address both ports bind")
_PORT = flags.DEFINE_integer("port", 8001, "the gRPC port (0 picks a free one)")
_HTTP_PORT = flags.DEFINE_integer(
  "http_port", None, "also serve HTTP/REST and /metrics on this port (0 picks a free one); unset: gRPC only"
)
_MAX_MESSAGE_BYTES = flags.DEFINE_integer("max_message_bytes", 4 << 20, "the largest request or answer")
_WORKERS = flags.DEFINE_integer(
  "workers", 16, "threads that answer requests (per protocol) and model runs at once"
)
_GRACE = flags.DEFINE_float("grace", 5.0, "seconds in-flight requests get on shutdown")
_STATS = flags.DEFINE_string("stats", None, "write request counts and latency percentiles here (JSON)")
_STATS_EVERY = flags.DEFINE_float("stats_every", 10.0, "seconds between --stats updates")
_SWITCH = flags.DEFINE_multi_string(
  "switch",
  [],
  "MODEL=q,p,m,slot_ms[,POLICY.json]: admit MODEL's requests through a token bucket (m units, q more per "
  "slot, p per request; POLICY.json: the smart switch's metric thresholds); the rest are answered "
  "RESOURCE_EXHAUSTED (common/serving/admission.py); repeatable",
)
if "debug" not in flags.FLAGS:  # common.app defines it too, with the same meaning
  flags.DEFINE_bool(
    "debug", False, "show the traceback of an error instead of one line (or EDGEINFER_DEBUG=1)"
  )
FLAGS = flags.FLAGS


def parse(argv: list[str]) -> None:
  """Parses `argv` (argv[0] the program); a bad flag, value or argument is one ConfigError line."""
  try:
    rest = FLAGS(argv)
  except flags.Error as e:
    raise ConfigError(f"{str(e).splitlines()[0]} (edgeinfer serve --help)") from None
  if len(rest) > 1:
    raise ConfigError(f"unexpected arguments {rest[1:]}: every setting is a flag (edgeinfer serve --help)")
  if FLAGS.debug:
    os.environ["EDGEINFER_DEBUG"] = "1"  # common.cli.run_main shows tracebacks from here on


def validate() -> None:
  """Every value checked before anything binds or loads."""
  if not _REPOSITORY.value:
    raise ConfigError("--repository is required: a model repository, e.g. RUN/exports/repository")
  for name, port in (("--port", _PORT.value), ("--http_port", _HTTP_PORT.value)):
    if port is not None and not 0 <= port < 65536:
      raise ConfigError(f"{name}={port}: must be in [0, 65535]")
  if _HTTP_PORT.value and _HTTP_PORT.value == _PORT.value:
    raise ConfigError(f"--http_port={_HTTP_PORT.value}: the gRPC --port is the same; pick another")
  checks = (
    ("--max_message_bytes", _MAX_MESSAGE_BYTES.value, _MAX_MESSAGE_BYTES.value >= 1024, ">= 1024"),
    ("--workers", _WORKERS.value, _WORKERS.value >= 1, ">= 1"),
    ("--grace", _GRACE.value, _GRACE.value >= 0, ">= 0"),
    ("--stats_every", _STATS_EVERY.value, _STATS_EVERY.value > 0, "> 0"),
  )
  for name, value, ok, rule in checks:
    if not ok:
      raise ConfigError(f"{name}={value}: must be {rule}")
  switches()


def switches() -> dict:
  """--switch's buckets by model (ConfigError naming a malformed one)."""
  from common.serving import admission

  return dict(admission.parse(spec) for spec in _SWITCH.value)


def start():
  """Loads the repository and starts the front ends: (grpc server, core, HttpServer | None, ready line)."""
  from common.serving import core, repository, rest, server

  models = repository.load_repository(_REPOSITORY.value)
  gates = switches()
  unknown = sorted(set(gates) - set(models))
  if unknown:
    raise ConfigError(f"--switch names {unknown}, not served (the repository has {sorted(models)})")
  c = core.Core(models, workers=_WORKERS.value, admission=gates)
  srv, _, port = server.start(
    c, host=_HOST.value, port=_PORT.value, max_message_bytes=_MAX_MESSAGE_BYTES.value, workers=_WORKERS.value
  )
  line = f"serving {len(models)} models on {_HOST.value}:{port}"
  if _HTTP_PORT.value is None:
    return srv, c, None, line
  http = rest.HttpServer(
    c,
    host=_HOST.value,
    port=_HTTP_PORT.value,
    max_message_bytes=_MAX_MESSAGE_BYTES.value,
    workers=_WORKERS.value,
    grace_s=_GRACE.value,
  )
  try:
    http_port = http.start()
  except Exception:
    srv.stop(0)
    raise
  return srv, c, http, f"{line} (gRPC) and {_HOST.value}:{http_port} (HTTP)"


def serve() -> int:
  from common.report import write_json

  logging.basicConfig(
    level=logging.INFO, format="%(asctime)s serve %(levelname)s %(message)s", stream=sys.stderr
  )
  srv, c, http, line = start()
  stop = threading.Event()
  for sig in (signal.SIGTERM, signal.SIGINT):
    signal.signal(sig, lambda *_: stop.set())
  print(line, flush=True)
  while not stop.wait(_STATS_EVERY.value):  # live counts and percentiles for whoever watches
    if _STATS.value:
      write_json(_STATS.value, c.stats.summary())
  done = srv.stop(_GRACE.value)
  if http is not None:
    http.stop()
  done.wait()
  summary = c.stats.summary()
  logging.getLogger("edgeinfer.serve").info("stopped: %s", json.dumps(summary))
  if _STATS.value:
    write_json(_STATS.value, summary)
  return 0


def main(argv: list[str] | None = None) -> None:
  argv = list(sys.argv if argv is None else argv)
  if any(a in ("-h", "--help", "-help", "--helpfull") for a in argv[1:]):
    print(__doc__.strip() + "\n\nflags:\n" + FLAGS.module_help(sys.modules[__name__]))
    return

  def go() -> int:
    parse(argv)
    validate()
    return serve()

  cli.run_main(go)


if __name__ == "__main__":
  main()
