"""A packet capture of the tc link's device side: what the kernel's qdisc let out, and when.

  python -m common.serving.capture --iface IFACE --out packets.jsonl   (inside the device's namespace)
  python -m common.serving.capture --summary RUN_DIR                 (what a captured run says)
  python -m common.serving.capture --estimates RUN_DIR   (its throughput estimates against the trace)

Records every IPv4 TCP packet the interface sends or receives, one JSON list a line:
`[t, dir, wire_bytes, payload_bytes, flags, sport, dport, seq, ack]`, with `t` the kernel's receive
or transmit timestamp on the machine's monotonic clock (the device record's `t0_monotonic` is the
stream's start on it), `dir` "out" or "in". An outgoing packet is seen after the qdisc, as it
leaves for the wire, so the capture shows when tbf released each segment, the server's ACKs and
the device's own (delayed) ACKs. `common.serving.link.TcLink` runs it when `deploy.capture` is
set, writing `packets.jsonl` beside the run's report. With `--tcp_info PATH` it also samples the
namespace's TCP sockets every `--every_ms` with `ss -tin` (the kernel's TCP_INFO: congestion
window, smoothed RTT, BBR's bandwidth estimate and pacing rate, bytes unacknowledged, not yet
sent and sent again), one JSON object a line with `t` on the same clock and `peer`. Prints
`capturing IFACE` once the socket is bound; stops on SIGTERM or when the interface goes away.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

ETH_P_ALL, SO_TIMESTAMPNS, PACKET_OUTGOING = 0x0003, 35, 4


def parse(frame: bytes) -> tuple | None:
  """(wire bytes, payload bytes, TCP flags, sport, dport, seq, ack) of an Ethernet IPv4 TCP frame,
  None for anything else."""
  if len(frame) < 54 or frame[12:14] != b"\x08\x00" or frame[23] != 6:
    return None
  ihl = (frame[14] & 0x0F) * 4
  total = struct.unpack("!H", frame[16:18])[0]
  tcp = 14 + ihl
  sport, dport, seq, ack = struct.unpack("!HHII", frame[tcp : tcp + 12])
  doff = (frame[tcp + 12] >> 4) * 4
  return len(frame), total - ihl - doff, frame[tcp + 13], sport, dport, seq, ack


TCP_INFO_FIELDS = {  # name -> pattern in `ss -tin`'s line (numbers: bytes, bits/s, ms, packets)
  "cwnd": r"\bcwnd:(\d+)",
  "srtt_ms": r"\brtt:([\d.]+)/",
  "bbr_bw_bps": r"\bbw:(\d+)bps",
  "pacing_rate_bps": r"\bpacing_rate (\d+)bps",
  "delivery_rate_bps": r"\bdelivery_rate (\d+)bps",
  "unacked": r"\bunacked:(\d+)",
  "notsent_bytes": r"\bnotsent:(\d+)",
  "bytes_retrans": r"\bbytes_retrans:(\d+)",
  "lost": r"\blost:(\d+)",
}


def parse_ss(text: str) -> list[dict]:
  """The established TCP sockets of `ss -tinH` output: peer and TCP_INFO_FIELDS (absent: 0)."""
  out, lines = [], text.splitlines()
  for head, info in zip(lines[::2], lines[1::2], strict=False):
    parts = head.split()
    if not parts or parts[0] != "ESTAB":
      continue
    row = {"peer": parts[4]}
    for name, pattern in TCP_INFO_FIELDS.items():
      m = re.search(pattern, info)
      row[name] = float(m.group(1)) if m else 0.0
    out.append(row)
  return out


def sample_tcp_info(out_path: str, every_s: float, stop) -> None:
  """`ss -tinH` every `every_s` until `stop()`: each socket's fields, stamped, to `out_path`."""
  with open(out_path, "w") as f:
    while not stop():
      t = time.monotonic()
      r = subprocess.run(["ss", "-tinH"], capture_output=True, text=True, check=False)
      for row in parse_ss(r.stdout):
        f.write(json.dumps({"t": round(t, 6), **row}) + "\n")
      time.sleep(max(every_s - (time.monotonic() - t), 0.0))


def _timestamp(ancillary, clock_offset: float) -> float:
  for level, kind, data in ancillary:
    if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
      sec, ns = struct.unpack("qq", data[:16])
      return sec + ns * 1e-9 - clock_offset
  return time.monotonic()


def capture(iface: str, out_path: str, stop) -> int:
  """Writes every TCP packet on `iface` to `out_path` until `stop()` is true; returns the count."""
  sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
  sock.bind((iface, 0))
  sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
  sock.settimeout(0.2)
  offset = time.time() - time.monotonic()  # kernel timestamps are wall-clock: to the monotonic clock
  print(f"capturing {iface}", flush=True)
  n = 0
  with open(out_path, "w") as f:
    while not stop():
      try:
        frame, ancillary, _, address = sock.recvmsg(1 << 16, 256)
      except TimeoutError:
        continue
      except OSError:  # the interface (the namespace) is gone
        break
      fields = parse(frame)
      if fields is not None:
        direction = "out" if address[2] == PACKET_OUTGOING else "in"
        f.write(json.dumps([round(_timestamp(ancillary, offset), 6), direction, *fields]) + "\n")
        n += 1
  return n


def start(iface: str, out_path, *, tcp_info="", prefix=(), timeout_s: float = 30.0):
  """Starts the capture process (behind `prefix`, e.g. `ip netns exec NS`) and waits until it is
  bound; with `tcp_info` a path, the TCP_INFO samples go there."""
  from common.serving.process import start_helper

  args = [f"--iface={iface}", f"--out={out_path}"] + ([f"--tcp_info={tcp_info}"] if tcp_info else [])
  return start_helper("common.serving.capture", args, ready="capturing", what="the packet capture",
                      prefix=prefix, timeout_s=timeout_s)  # fmt: skip


def stop(proc, timeout_s: float = 5.0) -> None:
  """Ends a capture started by `start` (its file is complete when this returns)."""
  proc.terminate()
  proc.wait(timeout_s)


def summarize(run_dir) -> dict:
  """What a captured run's files say over its stream (from the record's `t0_monotonic` to its last
  frame's arrival and deadline), for the connection to the server: TCP_INFO's samples (the share
  with a pacing rate under 1 Mbit/s, the lowest pacing rate and BBR estimate, the median smoothed
  RTT, the share holding bytes not yet sent, the bytes TCP counts as sent again) and the data
  segments that left the qdisc (how many, how many of them a second time, and how many after a
  segment later in the byte stream: `overtaken`)."""
  from pathlib import Path

  import numpy as np

  from common import safeio

  d = Path(run_dir)
  rec = safeio.load_json(d / "device.json", what="device record", keys=("t0_monotonic", "stream", "frames"))
  t0 = rec["t0_monotonic"]
  t1 = t0 + max(rec["frames"]["arrival_s"]) + rec["stream"]["deadline_s"]
  info = [r for r in server_tcp_info(d) if t0 <= r["t"] <= t1]
  pace, bw = np.asarray([r["pacing_rate_bps"] for r in info]), np.asarray([r["bbr_bw_bps"] for r in info])
  packets = [json.loads(x) for x in (d / "packets.jsonl").read_text().splitlines()]
  data = [p for p in packets if p[1] == "out" and p[3] > 0 and t0 <= p[0] <= t1]
  firsts = {(p[7], p[3]) for p in data}
  late = overtaken(data)
  return {
    "tcp_info_samples": len(info),
    "pacing_below_1mbps": float(np.mean(pace < 1e6)) if info else 0.0,
    "pacing_min_bps": float(pace.min()) if info else 0.0,
    "bbr_bw_min_bps": float(bw.min()) if info else 0.0,
    "srtt_median_ms": float(np.median([r["srtt_ms"] for r in info])) if info else 0.0,
    "notsent_share": float(np.mean([r["notsent_bytes"] > 0 for r in info])) if info else 0.0,
    "bytes_retrans": info[-1]["bytes_retrans"] - info[0]["bytes_retrans"] if info else 0.0,
    "data_segments_out": len(data),
    "data_segments_out_again": len(data) - len(firsts),
    "data_segments_overtaken": len(late),
    "overtaken_after_ms_p50": float(np.median(late)) * 1e3 if late else 0.0,
    "overtaken_after_ms_max": float(max(late)) * 1e3 if late else 0.0,
  }


def server_tcp_info(run_dir) -> list[dict]:
  """A captured run's TCP_INFO rows (`tcp_info.jsonl`) of its connection to the server."""
  from pathlib import Path

  from common.serving.link import TC_SERVER_PORT

  rows = [json.loads(x) for x in (Path(run_dir) / "tcp_info.jsonl").read_text().splitlines()]
  return [r for r in rows if r["peer"].endswith(f":{TC_SERVER_PORT}")]


def rate_estimates(run_dir) -> dict:
  """How far the throughput a device can know is from the link's: for every answered frame of a
  captured tc run, the trace's mean rate over the frame's transfer as the device infers it (the
  `link_s` before the answer less the server's compute and a round trip; tc's floor where the trace
  is below it), against the sample the
  controllers get from the answer (payload bits over `link_s`, `common.serving.device.Ledger`) and
  the kernel's delivery rate (TCP_INFO, the first sample at or after the answer). Per setup: the
  frames, and for each estimate the median of its ratio to the trace's rate and the share within a
  factor of 2 (`estimate_ratios`)."""
  from pathlib import Path

  from common import safeio
  from common.serving import runner

  d = Path(run_dir)
  spec = safeio.load_json(d / "device_spec.json", what="device spec", keys=("settings",))
  rec = safeio.load_json(d / "device.json", what="device record", keys=("t0_monotonic", "frames", "profile"))
  return estimate_ratios(rec, server_tcp_info(d), runner.load_trace(spec["settings"]))


def estimate_ratios(rec: dict, info: list, trace) -> dict:
  """`rate_estimates` of a device record, its TCP_INFO rows (one connection) and its trace."""
  import numpy as np

  f, names, bits = rec["frames"], rec["profile"]["names"], rec["profile"]["bits"]
  floor = rec.get("wire", {}).get("floor_bps", 1.0)  # tc never shapes below it
  t_info = np.asarray([r["t"] for r in info]) - rec["t0_monotonic"]
  rows: dict[str, list] = {}
  for k, link_s in enumerate(f["link_s"]):
    if not link_s or link_s <= 0 or not f["server_s"][k]:
      continue
    end = f["closed_s"][k] - f["server_s"][k] - rec["rtt_s"]
    true = max(trace.bits_between(end - link_s, end) / link_s, floor)
    j = int(np.searchsorted(t_info, f["closed_s"][k]))
    kernel = info[j]["delivery_rate_bps"] if j < len(info) else float("nan")
    rows.setdefault(names[f["setup"][k]], []).append((bits[f["setup"][k]] / link_s / true, kernel / true))
  out = {}
  for name in sorted(rows, key=names.index):
    r = np.asarray(rows[name])
    within = (r > 0.5) & (r < 2.0)
    out[name] = {"frames": len(r), "answer_ratio_median": float(np.median(r[:, 0])),
                 "answer_within_2x": float(within[:, 0].mean()),
                 "kernel_ratio_median": float(np.nanmedian(r[:, 1])), "kernel_within_2x": float(within[:, 1].mean())}  # fmt: skip
  return out


def overtaken(data: list) -> list[float]:
  """The data segments (capture rows in departure order, one connection) that left the qdisc after a
  segment later in the byte stream, each at its first departure: tbf's queue is a FIFO, so such a
  segment was not in it when the later one left; it had been dropped there (tbf enqueues the
  segments of a request at once, against its byte limit) and TCP sent it again. Returns, for each,
  the seconds since the segment just before it in the byte stream left (one whose predecessor is
  not in the capture is left out). Sequence numbers are taken modulo 2^32 from the first row's."""
  if not data:
    return []
  base = data[0][7]
  left_at: dict[int, float] = {}  # end of a segment in the byte stream -> its first departure
  out, highest = [], 0
  for p in data:
    seq = (p[7] - base) % 2**32
    end = seq + p[3]
    if end <= highest and end not in left_at and seq in left_at:
      out.append(p[0] - left_at[seq])
    left_at.setdefault(end, p[0])
    highest = max(highest, end)
  return out


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m common.serving.capture", description=__doc__.splitlines()[0])
  p.add_argument("--summary", default="", help="print what a captured run's folder says, capture nothing")
  p.add_argument(
    "--estimates",
    default="",
    help="print a captured run's throughput estimates against its trace, capture nothing",
  )
  p.add_argument("--iface")
  p.add_argument("--out")
  p.add_argument("--tcp_info", default="", help="also sample `ss -tin` to this file")
  p.add_argument("--every_ms", type=float, default=20.0)
  args = p.parse_args(argv)
  if args.summary or args.estimates:
    from common.errors import EdgeInferError

    try:
      out = summarize(args.summary) if args.summary else rate_estimates(args.estimates)
    except (EdgeInferError, OSError) as e:
      print(f"error: {e}", file=sys.stderr)
      return 2
    print(json.dumps(out, indent=1))
    return 0
  if not (args.iface and args.out):
    p.error("--iface and --out are required to capture")
  done = []
  signal.signal(signal.SIGTERM, lambda *_: done.append(True))
  if args.tcp_info:
    sampler = threading.Thread(
      target=sample_tcp_info, args=(args.tcp_info, args.every_ms / 1e3, lambda: bool(done)), daemon=True
    )
    sampler.start()
  capture(args.iface, args.out, lambda: bool(done))
  if args.tcp_info:
    sampler.join(2.0)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
