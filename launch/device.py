"""The device side of a deployment: stream frames of a technique's exports to a server.

  python -m launch.device agile --workdir RUN --server HOST:PORT --trace SPEC --frames N [--fps 10 --deadline 0.5 ...]
  python -m launch.device offload --workdir RUN --server HOST:PORT [--policy all|mdp|dqn --setting 0 --frames N \
      --fps 20 --order iid|location_reset --arrivals periodic|markov --stream-seed 0 --deadline 0.5]
  python -m launch.device coinfer --workdir RUN --server HOST:PORT --trace SPEC --frames N --fps F \
      [--deadline 0.2 --controller mpc|rate|buffer|fixed:N4Q8 --link pacer|tc --trace-scale 1.0 --out FILE]

SPEC is a synthetic kind (markov, random_walk, step) or a Mahimahi / CSV file (coinfer.traces).
With `--link pacer` (the default) the device's sender paces the uplink along the trace; with
`--link tc` the device runs inside a namespace made by `launch.deploy` and shapes its own
interface (`--tc-netns`, `--tc-iface`). Writes RUN/deploy/device.json (per-frame records,
summary, the calibrated profile).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from common.cli import run_main
from common.errors import ConfigError

TECHNIQUES = ("coinfer", "agile", "offload")
AGILE_DEFAULTS = {"fps": 10.0, "deadline_s": 0.5}  # an agile run has no stream settings of its own
OFFLOAD_DEFAULTS = {"fps": 20.0, "deadline_s": 0.5}  # fps: arrival slots per second


def add_stream_args(p: argparse.ArgumentParser) -> None:
  p.add_argument("--workdir", required=True, help="the technique's run (its exports/ and config.json)")
  p.add_argument("--trace", default="markov", help="markov | random_walk | step | a Mahimahi or .csv file")
  p.add_argument("--trace-seed", type=int, default=0)
  p.add_argument("--trace-scale", type=float, default=1.0, help="multiply the trace's bandwidth by this")
  p.add_argument("--frames", type=int, default=300)
  p.add_argument("--fps", type=float, default=None, help="default: the run's config.stream.fps")
  p.add_argument("--deadline", type=float, default=None, help="seconds; default: config.stream.deadline_s")
  p.add_argument("--controller", default="mpc", help="mpc | rate | buffer | fixed:<setup>")
  p.add_argument("--float", action="store_true", help="run the float device parts even where int8 exists")
  p.add_argument("--policy", default="all", help="offload: mdp | dqn | all (one stream each, in turn)")
  p.add_argument(
    "--setting", type=int, default=0, help="offload: index of the (config.bucket.rates, .depths) bucket"
  )
  p.add_argument("--stream-seed", type=int, default=0, help="offload: seed of the image / interval stream")
  p.add_argument("--order", choices=("iid", "location_reset"), default=None, help="offload: image order")
  p.add_argument("--arrivals", choices=("periodic", "markov"), default=None, help="offload: arrival process")


def load_trace(args):
  import dataclasses

  import numpy as np

  from common import traces

  if not args.trace_scale > 0:
    raise ConfigError(f"--trace-scale {args.trace_scale}: must be > 0")
  seconds = max(30.0, args.frames / (args.fps or 10.0) + 5.0)
  tr = traces.load(args.trace, seed=args.trace_seed, seconds=seconds)
  if args.trace_scale != 1.0:
    tr = dataclasses.replace(tr, rates_bps=np.asarray(tr.rates_bps) * args.trace_scale)
  return tr


def offload_policies(args) -> list[str]:
  from offload import deploy as odeploy

  if args.policy == "all":
    return list(odeploy.POLICIES) if args.setting == 0 else ["mdp"]
  if args.policy not in odeploy.POLICIES:
    raise ConfigError(f"--policy {args.policy!r}: must be one of {list(odeploy.POLICIES)} or 'all'")
  return [args.policy]


def run_offload(args, client, tr, shaper, progress) -> dict:
  """One stream per policy, in turn, on the same images: {"policies": {policy: record}, "summary"}."""
  from offload import deploy as odeploy

  dep = odeploy.load(args.workdir)
  client.connect(args.connect_timeout)
  runs = {}
  for pol in offload_policies(args):
    runs[pol] = odeploy.run(
      dep,
      client,
      tr,
      policy=pol,
      setting=args.setting,
      frames=args.frames,
      fps=float(args.fps or OFFLOAD_DEFAULTS["fps"]),
      deadline_s=float(args.deadline or OFFLOAD_DEFAULTS["deadline_s"]),
      stream_seed=args.stream_seed,
      order=args.order,
      arrivals=args.arrivals,
      link=args.link,
      shaper=shaper,
      progress=progress,
    )
  return {"policies": runs, "summary": {p: r["summary"] for p, r in runs.items()}}


def main(argv=None) -> int:
  from coinfer import deploy
  from common.serving import device as dev
  from common.serving import link

  p = argparse.ArgumentParser(prog="python -m launch.device", description=__doc__.splitlines()[0])
  p.add_argument("technique", choices=TECHNIQUES)
  p.add_argument("--server", required=True, help="HOST:PORT of the server")
  p.add_argument("--link", choices=("pacer", "tc"), default="pacer")
  p.add_argument("--tc-netns", default=None, help="with --link tc: the device's namespace")
  p.add_argument("--tc-iface", default=None, help="with --link tc: the device's veth interface")
  p.add_argument(
    "--tc-parent", default="root", help="with --link tc: where the tbf qdisc hangs (root or 1:1)"
  )
  p.add_argument("--out", default=None, help="default RUN/deploy/device.json")
  p.add_argument("--connect-timeout", type=float, default=10.0, help="seconds to wait for the server")
  add_stream_args(p)
  args = p.parse_args(argv)
  tr = load_trace(args)
  shaper = None
  if args.link == "tc":
    link.require_tc()
    if not (args.tc_netns and args.tc_iface):
      raise ConfigError(
        "--link tc needs --tc-netns and --tc-iface (python -m launch.deploy --link tc sets them up)"
      )
    shaper = link.TcShaper(
      tr,
      args.tc_netns,
      args.tc_iface,
      tuple(args.tc_parent.split()) if args.tc_parent == "root" else ("parent", args.tc_parent),
    )
  client = dev.Client(args.server)

  def progress(k):
    if k == 0:
      print("stream started", flush=True)

  if args.technique == "offload":
    out = run_offload(args, client, tr, shaper, progress)
  elif args.technique == "agile":
    from agile import deploy as agile_deploy

    dep = agile_deploy.load(args.workdir, int8=not args.float)
    client.connect(args.connect_timeout)
    out = agile_deploy.run(
      dep,
      client,
      tr,
      frames=args.frames,
      fps=float(args.fps or AGILE_DEFAULTS["fps"]),
      deadline_s=float(args.deadline or AGILE_DEFAULTS["deadline_s"]),
      link=args.link,
      shaper=shaper,
      progress=progress,
    )
  else:
    dep = deploy.load(args.workdir, int8=not args.float)
    stream = deploy.stream_settings(dep, fps=args.fps, deadline_s=args.deadline)
    client.connect(args.connect_timeout)
    out = deploy.run(
      dep,
      client,
      tr,
      frames=args.frames,
      controller=args.controller,
      stream=stream,
      link=args.link,
      shaper=shaper,
      progress=progress,
    )
  if shaper is not None:
    out["tc_rate_changes"] = shaper.changes
  client.close()
  path = Path(args.out or Path(args.workdir) / "deploy" / "device.json")
  from common.report import write_json

  path.parent.mkdir(parents=True, exist_ok=True)
  write_json(path, out)
  print(json.dumps(out["summary"]), flush=True)
  return 0


if __name__ == "__main__":
  run_main(main)
