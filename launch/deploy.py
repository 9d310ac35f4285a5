"""Deploy a technique's exports on this machine: a server process, a device process, a shaped link.

  python -m launch.deploy agile --workdir RUN --trace SPEC [--frames 300 --fps 10 --deadline 0.5 --float]
  python -m launch.deploy offload --workdir RUN [--policy all|mdp|dqn --setting 0 --frames 300 --fps 20 \
      --stream-seed 0 --order iid|location_reset --arrivals periodic|markov --deadline 0.5 --trace markov]
  python -m launch.deploy coinfer --workdir RUN --trace SPEC --link pacer|tc \
      [--frames 300 --fps 10 --deadline 0.2 --controller mpc --trace-scale 1.0 --delay-ms 0]

Starts `python -m launch.serve` on the run's model repository (RUN/exports/repository) and
`python -m launch.device` against it, then writes RUN/deploy/report.md: the measured latency
CDF, deadline-miss rate, accuracy and bytes per frame, the chosen setup against the trace's
bandwidth, each beside the simulator's prediction on the same trace. With `--link tc` the
server runs in a network namespace and the device in another, joined by a veth pair whose
device side a tbf qdisc shapes along the trace (root and iproute2 needed); the namespaces
are removed when the run ends, fails or is stopped.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
from pathlib import Path

from common.cli import run_main
from common.errors import ServingError
from common.serving.process import PY, start_server, stop_server
from common.serving.process import child_env as _env


def run_device(argv: list[str], prefix=(), timeout_s: float = 3600.0) -> None:
  try:
    r = subprocess.run(
      [*prefix, *PY, "-m", "launch.device", *argv],
      capture_output=True,
      text=True,
      env=_env(),
      timeout=timeout_s,
    )
  except subprocess.TimeoutExpired:
    raise ServingError(f"the device did not finish within {timeout_s:.0f} s") from None
  if r.returncode != 0:
    err = [x for x in r.stderr.strip().splitlines() if x.strip()]
    raise ServingError(f"the device failed: {err[-1] if err else f'exit status {r.returncode}'}")


def _run_pair(args, repo: Path, trace, dev_args: list[str], stats: Path) -> None:
  """The server and the device processes, over loopback (pacer) or two namespaces (tc)."""
  from common.serving import link

  if args.link == "pacer":
    server, port = start_server(repo, stats=stats)
    try:
      run_device([*dev_args, "--server", f"127.0.0.1:{port}"])
    finally:
      stop_server(server)
  else:
    with link.TcNetwork(trace.rate_at(0.0), delay_ms=args.delay_ms) as net:
      server, port = start_server(
        repo, host=link.SERVER_ADDR, port=8001, prefix=net.exec_prefix(net.server_ns), stats=stats
      )
      try:
        parent = "root" if args.delay_ms <= 0 else "1:1"
        run_device(
          [
            *dev_args,
            "--server",
            f"{link.SERVER_ADDR}:{port}",
            "--tc-netns",
            net.device_ns,
            "--tc-iface",
            net.device_iface,
            "--tc-parent",
            parent,
          ],
          prefix=net.exec_prefix(net.device_ns),
        )
      finally:
        stop_server(server)


def _offload_report(workdir: Path, out_dir: Path, device_json: Path, server_stats, export_info) -> int:
  from common import safeio
  from common.report import write_json
  from offload import deploy as odeploy
  from offload import deploy_report

  runs = safeio.load_json(device_json, what="device record", keys=("policies",))["policies"]
  dep = odeploy.load(workdir)
  preds = {p: odeploy.predict(dep, out) for p, out in runs.items()}
  gaps = deploy_report.gaps(runs, preds)
  write_json(
    out_dir / "summary.json",
    {
      "measured": {p: r["summary"] for p, r in runs.items()},
      "simulator": preds,
      "gap": gaps,
      "export": export_info,
    },
  )
  path = deploy_report.write_report(out_dir, runs, preds, server_stats, export_info)
  figs = ", ".join(
    f"{p} loss {runs[p]['summary']['loss']:.4f} (simulator {preds[p]['loss']:.4f})" for p in runs
  )
  print(f"wrote {path}: {figs}")
  return 0


def main(argv=None) -> int:
  from coinfer import deploy
  from common.serving import repository
  from launch.device import TECHNIQUES, add_stream_args, load_trace

  p = argparse.ArgumentParser(prog="python -m launch.deploy", description=__doc__.splitlines()[0])
  p.add_argument("technique", choices=TECHNIQUES)
  p.add_argument("--link", choices=("pacer", "tc"), default="pacer")
  p.add_argument("--delay-ms", type=float, default=0.0, help="with --link tc: netem delay on the uplink")
  p.add_argument("--out", default=None, help="report folder (default RUN/deploy)")
  add_stream_args(p)
  args = p.parse_args(argv)
  if args.link == "tc":
    from common.serving import link

    link.require_tc()
  trace = load_trace(args)  # a malformed trace fails here, before anything starts
  workdir = Path(args.workdir)
  if args.technique == "agile":
    from agile import deploy as agile_deploy

    dep = agile_deploy.load(workdir, int8=not args.float)
    agile_deploy.write_repository(workdir, dep.meta, dep.codec)
  if args.technique == "offload":
    from offload import deploy as odeploy

    export_info = odeploy.export_classifiers(workdir)
  repo = workdir / "exports" / "repository"
  repository.load_repository(repo)  # missing or partial: one line, before any process starts
  if args.technique == "coinfer":
    dep = deploy.load(workdir)
  out_dir = Path(args.out) if args.out else workdir / "deploy"
  out_dir.mkdir(parents=True, exist_ok=True)
  stats, device_json = out_dir / "server_stats.json", out_dir / "device.json"
  for f in (stats, device_json):
    f.unlink(missing_ok=True)
  dev_args = [args.technique, "--workdir", str(workdir), "--out", str(device_json), "--link", args.link]
  dev_args += [
    "--trace",
    args.trace,
    "--trace-seed",
    str(args.trace_seed),
    "--trace-scale",
    str(args.trace_scale),
  ]
  dev_args += ["--frames", str(args.frames)]
  dev_args += ["--controller", args.controller] if args.technique == "coinfer" else []
  if args.technique == "offload":
    dev_args += [
      "--policy",
      args.policy,
      "--setting",
      str(args.setting),
      "--stream-seed",
      str(args.stream_seed),
    ]
    dev_args += [f"--order={args.order}"] if args.order else []
    dev_args += [f"--arrivals={args.arrivals}"] if args.arrivals else []
  dev_args += [f"--fps={args.fps}"] if args.fps else []
  dev_args += [f"--deadline={args.deadline}"] if args.deadline else []
  dev_args += ["--float"] if args.float else []
  previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the finally blocks tear down
  try:
    _run_pair(args, repo, trace, dev_args, stats)
  finally:
    signal.signal(signal.SIGTERM, previous)
  from common import safeio
  from common.report import write_json

  server_stats = safeio.load_json_if_present(stats, what="server statistics")
  if args.technique == "offload":
    return _offload_report(workdir, out_dir, device_json, server_stats, export_info)
  if args.technique == "agile":
    out = safeio.load_json(device_json, what="device record", keys=("summary", "frames"))
    pred = agile_deploy.predict(dep, out, trace)
    write_json(out_dir / "summary.json", {"measured": out["summary"], "predicted": pred})
    path = agile_deploy.write_report(out_dir, out, pred, server_stats)
    m = out["summary"]
    print(
      f"wrote {path}: accuracy {m['accuracy']:.4f} (split parity {pred['accuracy']:.4f}), "
      f"{m['fallbacks']} fallbacks, {m['bytes_per_frame']:.0f} bytes/frame"
    )
    return 0
  out = safeio.load_json(device_json, what="device record", keys=("summary", "frames", "profile"))
  pred = deploy.predict(dep, out, trace)
  write_json(out_dir / "summary.json", {"measured": out["summary"], "simulator": pred["summary"]})
  path = deploy.write_report(out_dir, out, pred, trace, server_stats)
  m, s = out["summary"], pred["summary"]
  print(
    f"wrote {path}: miss rate {m['deadline_miss_rate']:.3f} (simulator {s['deadline_miss_rate']:.3f}), "
    f"accuracy {m['accuracy']:.3f} (simulator {s['accuracy']:.3f}), {m['bytes_per_frame']:.0f} bytes/frame"
  )
  return 0


if __name__ == "__main__":
  run_main(main)
