"""The `tc` link: server and device in two network namespaces joined by a veth pair whose
device side a tbf qdisc holds at 1 Mbit/s; the throughput the device measures on 64 kB
requests is within 10 % of it, and the namespaces are gone afterwards. Runs as root with
iproute2 (as in CI); skipped with the reason otherwise."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from common.serving import link, repository
from common.serving.process import child_env, start_server, stop_server
from common.traces import Trace
from tests.serving.tiny_models import echo_model

NBYTES = 64_000
FPS = 1.8  # a 64 kB request takes about 0.54 s at 1 Mbit/s: one at a time on the link

DEVICE = """
import json, sys
import numpy as np
from common.serving import device as dev
from common.serving import link
from common.traces import Trace
url, n, frames, fps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
tc = link.from_spec(json.loads(sys.argv[5]), Trace("1mbit", np.asarray([0.0]), np.asarray([1e6]), 60.0))
client = dev.Client(url)
client.connect()
rtt = client.base_rtt_s()
payload = np.random.default_rng(0).integers(0, 256, n, dtype=np.uint8)
step = lambda k, obs: dev.Request("echo", {"X": payload}, "Y")
res = dev.run_stream(client, step, frames=frames, fps=fps, deadline_s=30.0, link=tc, rtt_s=rtt)
print(json.dumps({"status": [r.status for r in res], "bits": [8 * r.wire_bytes for r in res],
                  "link_s": [r.link_s for r in res], "rtt_s": rtt}))
"""


def _tc_available() -> str:
  if os.geteuid() != 0:
    return "needs root"
  if not (shutil.which("ip") and shutil.which("tc")):
    return "needs iproute2 (ip, tc)"
  probe = f"ei_probe_tc_{os.getpid()}"  # one per process: xdist's workers probe at the same time
  r = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
  subprocess.run(["ip", "netns", "del", probe], capture_output=True)
  return "" if r.returncode == 0 else f"network namespaces unavailable: {r.stderr.strip()}"


_WHY = _tc_available()


def _device_on(net, repo, script: str, *args: str) -> str:
  """A server on `repo` on the link's network and `script` (server address first, then `args`) in
  the device's namespace; the script's last line of output."""
  server, port = start_server(repo, host=net.server_host, port=net.server_port, prefix=net.server_prefix)
  try:
    address = net.device_address or f"{net.server_host}:{port}"
    r = subprocess.run(
      [*net.device_prefix, sys.executable, "-c", script, address, *args],
      capture_output=True,
      text=True,
      env=child_env(),
      timeout=120,
    )
  finally:
    stop_server(server)
  assert r.returncode == 0, r.stderr[-2000:]
  return r.stdout.strip().splitlines()[-1]


@pytest.mark.skipif(bool(_WHY), reason=_WHY or "tc available")
def test_constant_1mbit_link_measures_1mbit(tmp_path):
  """Through the Link interface, as the deploy runner uses it: the network, then the device's side
  rebuilt from its spec in the device's namespace (the shaper holds the trace's 1 Mbit/s)."""
  repository.write_model(tmp_path / "repo", "echo", echo_model(NBYTES))
  tc = link.make("tc", Trace("1mbit", np.asarray([0.0]), np.asarray([1e6]), 60.0))
  with tc.network() as net:
    out = json.loads(
      _device_on(net, tmp_path / "repo", DEVICE, str(NBYTES), "12", str(FPS), json.dumps(net.spec))
    )
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert net.spec["netns"] in names
  assert (
    net.spec["netns"] not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
  )
  assert out["status"] == ["ok"] * 12
  tp = np.asarray(out["bits"][1:]) / np.asarray(out["link_s"][1:])  # the first rides the full token bucket
  print(f"tc link at 1 Mbit/s: measured median {np.median(tp) / 1e6:.3f} Mbit/s over {tp.size} requests")
  assert abs(np.median(tp) / 1e6 - 1.0) <= 0.10, tp


def test_tc_without_iproute2_is_one_line_naming_pacer(tmp_path):
  no_tc = {**child_env(), "PATH": str(tmp_path)}  # no ip, no tc
  args = [
    "deploy",
    "--config=agile/configs/quick.py:fast",
    f"--workdir={tmp_path}",
    "--config.deploy.link=tc",
  ]
  r = subprocess.run(
    [sys.executable, "-m", "agile.main", *args], capture_output=True, text=True, env=no_tc, timeout=120
  )
  assert r.returncode == 2 and "Traceback" not in r.stderr
  assert "--config.deploy.link=pacer" in r.stderr.strip().splitlines()[-1], r.stderr


@pytest.mark.skipif(bool(_WHY), reason=_WHY or "tc available")
def test_namespaces_are_removed_when_the_run_fails():
  def names():
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout

  with pytest.raises(RuntimeError, match="the run failed"):
    with link.TcNetwork(2e6, tag=f"eif{os.getpid() % 10000}") as net:
      link.set_rate(net.device_ns, net.device_iface, 3e6)
      assert net.device_ns in names() and net.server_ns in names()
      raise RuntimeError("the run failed")
  assert net.device_ns not in names() and net.server_ns not in names()


RTT = """
import sys
from common.serving import device as dev
c = dev.Client(sys.argv[1])
c.connect()
print(c.base_rtt_s(20))
"""


@pytest.mark.skipif(bool(_WHY), reason=_WHY or "tc available")
def test_delay_relay_adds_the_round_trip_through_the_kernel(tmp_path):
  """deploy.delay_ms = 40 on the tc link: the relay in the server's namespace holds each direction
  20 ms, so the device's measured round trip grows by 40 ms (the bytes still cross the shaped veth)."""
  repository.write_model(tmp_path / "repo", "echo", echo_model(16))
  trace = Trace("fast", np.asarray([0.0]), np.asarray([1e8]), 60.0)
  rtts = {}
  for delay in (0.0, 40.0):
    with link.make("tc", trace, delay_ms=delay).network() as net:
      rtts[delay] = float(_device_on(net, tmp_path / "repo", RTT))
  print(f"round trip without the relay {rtts[0.0] * 1e3:.2f} ms, with 40 ms {rtts[40.0] * 1e3:.2f} ms")
  assert 0.038 <= rtts[40.0] - rtts[0.0] <= 0.050, rtts


@pytest.mark.skipif(bool(_WHY), reason=_WHY or "tc available")
def test_the_shaper_lands_each_change_on_its_boundary_once():
  """A trace stepping every 100 ms for 1.5 s: every boundary gets one change (none twice, none
  skipped), started ahead by the time a `tc` process takes, so the changes land on their
  boundaries, not a `tc` process late (median lag under half the median time a change takes)."""
  import time

  trace = Trace("steps", np.arange(0.0, 3.0, 0.1), np.tile([100e3, 200e3], 15), 3.0)
  with link.TcNetwork(trace.rate_at(0.0)) as net:
    shaper = link.TcShaper(trace, net.device_ns, net.device_iface)
    shaper.start(time.monotonic())
    time.sleep(1.55)
    shaper.stop()
  assert shaper.error is None
  assert shaper.changes == 15, shaper.changes
  lags, took = np.asarray(shaper.lags_s), np.median(shaper.durations_s)
  assert abs(np.median(lags)) < 0.5 * took, (np.median(lags), took)


LISTEN = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 9100)); s.listen(1); print("listening", flush=True)
c, _ = s.accept(); n = 0
while (b := c.recv(65536)):
  n += len(b)
print(n, flush=True)
"""


@pytest.mark.skipif(bool(_WHY), reason=_WHY or "tc available")
def test_the_packet_capture_records_what_leaves_the_device_side(tmp_path):
  """3000 bytes sent from the device's namespace through tbf at 200 kbit/s: the capture holds them as
  outgoing TCP payload to the server's port, stamped on the monotonic clock within the transfer,
  the tbf's pace visible (the last segment leaves at least (3000 - burst) / 25000 s after the first)."""
  import time

  from common.serving import capture

  out = tmp_path / "packets.jsonl"
  with link.TcNetwork(200e3) as net:
    srv = subprocess.Popen([*net.exec_prefix(net.server_ns), sys.executable, "-c", LISTEN, link.SERVER_ADDR],
                           stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert srv.stdout.readline().startswith("listening")
    info = tmp_path / "tcp_info.jsonl"
    proc = capture.start(net.device_iface, out, tcp_info=info, prefix=net.exec_prefix(net.device_ns))
    t_begin = time.monotonic()
    send = f"import socket, time; s = socket.create_connection(('{link.SERVER_ADDR}', 9100)); s.sendall(b'x' * 3000); time.sleep(0.3); s.close()"
    subprocess.run([*net.exec_prefix(net.device_ns), sys.executable, "-c", send], check=True, timeout=30)
    assert int(srv.stdout.readline()) == 3000
    t_end = time.monotonic()
    capture.stop(proc)
    srv.wait(5)
  rows = [json.loads(line) for line in out.read_text().splitlines()]
  data = [r for r in rows if r[1] == "out" and r[6] == 9100 and r[3] > 0]
  assert sum(pl for _, pl in {(r[7], r[3]) for r in data}) == 3000  # a segment sent again counts once
  assert all(t_begin <= r[0] <= t_end for r in data)
  assert data[-1][0] - data[0][0] >= (3000 - 1600) / 25000
  sampled = [json.loads(line) for line in info.read_text().splitlines()]
  assert any(r["peer"].endswith(":9100") and r["cwnd"] > 0 and r["pacing_rate_bps"] > 0 for r in sampled)
  with pytest.raises(link.ServingError, match="needs the tc link"):
    link.make("pacer", None, capture=str(out))


def test_ss_lines_become_tcp_info_rows():
  from common.serving import capture

  text = (
    "ESTAB 0 0 [::ffff:10.77.0.1]:34490 [::ffff:10.77.0.2]:8001\n"
    "\t bbr wscale:10,10 rto:204 rtt:53.1/10.2 mss:1448 cwnd:12 unacked:2 bytes_retrans:992 "
    "bbr:(bw:257536bps,mrtt:0.005,pacing_gain:1.25,cwnd_gain:2) pacing_rate 318704bps "
    "delivery_rate 200000bps notsent:148\n"
  )
  (row,) = capture.parse_ss(text)
  assert row == {"peer": "[::ffff:10.77.0.2]:8001", "cwnd": 12.0, "srtt_ms": 53.1, "bbr_bw_bps": 257536.0,
                 "pacing_rate_bps": 318704.0, "delivery_rate_bps": 200000.0, "unacked": 2.0,
                 "notsent_bytes": 148.0, "bytes_retrans": 992.0, "lost": 0.0}  # fmt: skip


def test_a_captured_runs_summary_counts_over_its_stream_only(tmp_path):
  """Hand-made files: two TCP_INFO samples in the stream (one pacing at 0.5 Mbit/s), one before it
  and one for another peer; three data segments out in the stream, one of them twice."""
  from common.serving import capture

  t0 = 100.0
  record = {"t0_monotonic": t0, "stream": {"deadline_s": 0.2}, "frames": {"arrival_s": [0.0, 0.1]}}
  (tmp_path / "device.json").write_text(json.dumps(record))
  row = {"cwnd": 10, "srtt_ms": 40.0, "bbr_bw_bps": 4e5, "delivery_rate_bps": 0, "unacked": 1, "lost": 0}
  info = [
    {"t": 99.0, "peer": "[::1]:8001", "pacing_rate_bps": 1e3, "notsent_bytes": 0, "bytes_retrans": 0, **row},
    {
      "t": 100.05,
      "peer": "[::1]:8001",
      "pacing_rate_bps": 5e5,
      "notsent_bytes": 148,
      "bytes_retrans": 10,
      **row,
    },
    {"t": 100.1, "peer": "[::1]:9999", "pacing_rate_bps": 1e3, "notsent_bytes": 0, "bytes_retrans": 0, **row},
    {
      "t": 100.2,
      "peer": "[::1]:8001",
      "pacing_rate_bps": 2e6,
      "notsent_bytes": 0,
      "bytes_retrans": 1002,
      **row,
    },
  ]
  (tmp_path / "tcp_info.jsonl").write_text("".join(json.dumps(r) + "\n" for r in info))
  seg = lambda t, seq, pl: [t, "out", pl + 66, pl, 16, 1, 8001, seq, 0]  # noqa: E731
  packets = [seg(99.5, 1, 100), seg(100.01, 2, 1448), seg(100.03, 1450, 992), seg(100.2, 1450, 992),
             [100.21, "in", 66, 0, 16, 8001, 1, 0, 0], seg(100.25, 2442, 148), seg(101.0, 2590, 100)]  # fmt: skip
  (tmp_path / "packets.jsonl").write_text("".join(json.dumps(p) + "\n" for p in packets))
  s = capture.summarize(tmp_path)
  assert (s["tcp_info_samples"], s["pacing_below_1mbps"], s["pacing_min_bps"]) == (2, 0.5, 5e5)
  assert (s["notsent_share"], s["bytes_retrans"], s["srtt_median_ms"]) == (0.5, 992, 40.0)
  assert (s["data_segments_out"], s["data_segments_out_again"]) == (4, 1)


def test_throughput_estimates_are_held_against_the_traces_rate_over_each_transfer():
  """Hand-made: a trace at 100 kbit/s for 0.5 s then at 0 (tc's floor, 8 kbit/s, holds); the small
  setup's one frame: 800 bits in 1 ms (8x the trace), the kernel's rate at its answer 50 Mbit/s
  (500x); the large setup's: 20 kbit in 125 ms (1.6x) ending a round trip and the server's 2 ms
  before its answer, just before the rate falls, with 150 kbit/s from the kernel (1.5x), one
  frame never answered, and one in the zero-rate spell (20 kbit in 200 ms against the floor: 12.5x)
  with no TCP_INFO sample after it."""
  from common.serving import capture

  trace = Trace("t", np.asarray([0.0, 0.5]), np.asarray([1e5, 0.0]), 10.0)
  frames = {"setup": [0, 1, 1, 1], "link_s": [0.001, 0.125, 0.0, 0.2], "server_s": [0.001, 0.002, 0.0, 0.002],
            "closed_s": [0.1, 0.54, 0.5, 0.9]}  # fmt: skip
  rec = {"t0_monotonic": 50.0, "rtt_s": 0.04, "frames": frames, "wire": {"floor_bps": 8000.0},
         "profile": {"names": ["S", "L"], "bits": [800.0, 20000.0]}}  # fmt: skip
  info = [{"t": 50.05, "delivery_rate_bps": 1e6}, {"t": 50.12, "delivery_rate_bps": 5e7},
          {"t": 50.55, "delivery_rate_bps": 1.5e5}]  # fmt: skip
  got = capture.estimate_ratios(rec, info, trace)
  assert list(got) == ["S", "L"]
  s, big = got["S"], got["L"]
  assert s["frames"] == 1 and s["answer_ratio_median"] == pytest.approx(8.0)
  assert (
    s["kernel_ratio_median"] == pytest.approx(500.0) and s["answer_within_2x"] == s["kernel_within_2x"] == 0
  )
  assert big["frames"] == 2 and big["answer_ratio_median"] == pytest.approx((1.6 + 12.5) / 2)
  assert big["kernel_ratio_median"] == pytest.approx(1.5)
  assert big["answer_within_2x"] == big["kernel_within_2x"] == 0.5


def test_estimates_of_a_folder_without_a_capture_is_one_line(tmp_path, capsys):
  from common.serving import capture

  (tmp_path / "device_spec.json").write_text(json.dumps({"settings": {}}))
  (tmp_path / "device.json").write_text(json.dumps({"t0_monotonic": 0.0, "frames": {}, "profile": {}}))
  assert capture.main(["--estimates", str(tmp_path)]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "tcp_info.jsonl" in err


def test_a_segment_the_qdisc_dropped_shows_as_overtaken():
  """Hand-made departures: a request's second segment (seq 1450) leaves after the next request's
  segment (2442) and 100 ms after its first segment; a resent copy of it, an in-order stream and a
  sequence number that wraps past 2^32 are not counted."""
  from common.serving import capture

  base = 2**32 - 1000
  seg = lambda t, seq, pl: [t, "out", pl + 66, pl, 16, 1, 8001, (base + seq) % 2**32, 0]  # noqa: E731
  data = [seg(0.0, 2, 1448), seg(0.1, 2442, 294), seg(0.1001, 1450, 992), seg(0.3, 1450, 992),
          seg(0.4, 2736, 294), seg(0.5, 3030, 1448)]  # fmt: skip
  (after,) = capture.overtaken(data)
  assert after == pytest.approx(0.1001)
  assert capture.overtaken([seg(0.0, 2, 1448), seg(0.1, 1450, 992), seg(0.2, 2442, 294)]) == []
  assert capture.overtaken([]) == []
