"""Serve a model repository over the Open Inference Protocol v2 (gRPC).

  python -m launch.serve --repository runs/quickstart/coinfer/exports/repository [--host 127.0.0.1 --port 8001]

Prints `serving N models on HOST:PORT` once ready (with --port 0, the port picked). SIGTERM
or Ctrl-C stops it gracefully: no new requests, in-flight ones finish (up to --grace seconds);
the request counts and latency percentiles are logged and, with --stats, written as JSON
(also every --stats-every seconds while serving).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading

from common.cli import run_main
from common.errors import ConfigError


def main(argv=None) -> int:
  from common.serving import repository, server

  p = argparse.ArgumentParser(prog="python -m launch.serve", description=__doc__.splitlines()[0])
  p.add_argument("--repository", required=True, help="Triton-style model repository")
  p.add_argument("--host", default="127.0.0.1")
  p.add_argument("--port", type=int, default=8001, help="0 picks a free port")
  p.add_argument("--max-message-bytes", type=int, default=server.DEFAULT_MAX_MESSAGE_BYTES)
  p.add_argument("--workers", type=int, default=16)
  p.add_argument("--grace", type=float, default=5.0, help="seconds in-flight requests get on shutdown")
  p.add_argument("--stats", default=None, help="write request counts and latency percentiles here (JSON)")
  p.add_argument("--stats-every", type=float, default=10.0, help="seconds between --stats updates")
  args = p.parse_args(argv)
  if not 0 <= args.port < 65536:
    raise ConfigError(f"--port {args.port}: must be in [0, 65535]")
  if args.max_message_bytes < 1024 or args.workers < 1 or not args.stats_every > 0:
    raise ConfigError("--max-message-bytes must be >= 1024, --workers >= 1 and --stats-every > 0")
  logging.basicConfig(
    level=logging.INFO, format="%(asctime)s serve %(levelname)s %(message)s", stream=sys.stderr
  )
  models = repository.load_repository(args.repository)
  srv, servicer, port = server.start(
    models, host=args.host, port=args.port, max_message_bytes=args.max_message_bytes, workers=args.workers
  )
  stop = threading.Event()
  for sig in (signal.SIGTERM, signal.SIGINT):
    signal.signal(sig, lambda *_: stop.set())
  print(f"serving {len(models)} models on {args.host}:{port}", flush=True)
  from common.report import write_json

  while not stop.wait(args.stats_every):  # live counts and percentiles for whoever watches
    if args.stats:
      write_json(args.stats, servicer.stats.summary())
  srv.stop(args.grace).wait()
  summary = servicer.stats.summary()
  logging.getLogger("edgeinfer.serve").info("stopped: %s", json.dumps(summary))
  if args.stats:
    write_json(args.stats, summary)
  return 0


if __name__ == "__main__":
  run_main(main)
