"""Admission control at the server (`edgeinfer serve --switch`): the bucket's arithmetic equals the
offloading bucket's update, and through the runtime a refused request is RESOURCE_EXHAUSTED over
gRPC (the device counts the frame refused) and 429 over HTTP, counted in the server's metrics."""

import json
import sys
import urllib.error
import urllib.request

import numpy as np
import pytest

from common.errors import ConfigError
from common.serving import admission, repository
from common.serving import device as dev
from common.serving.process import start_server, stop_server
from tests.serving.tiny_models import add_model


def test_bucket_equals_the_offloading_buckets_update():
  """Requests at random times against a plain loop of `offload.bucket.step`'s rule (refill q per
  slot, never past m; a request is admitted when n >= p, which it spends)."""
  rng = np.random.default_rng(0)
  for q, p, m in [(1, 2, 5), (3, 4, 9), (0, 1, 2), (2, 1, 2)]:
    now = [0.0]
    gate = admission.Bucket(q, p, m, slot_s=0.1, clock=lambda: now[0])
    n, last_slot = m, 0
    for t in np.sort(rng.uniform(0.0, 5.0, 200)):
      now[0] = float(t)
      slot = int(t // 0.1)
      n, last_slot = min(m, n + q * (slot - last_slot)), slot
      expected = n >= p
      n -= p if expected else 0
      assert gate.take() == expected, (q, p, m, t)


@pytest.mark.parametrize(
  "spec", ["add", "add=1,2,3", "add=1,0,3,10", "add=1,4,3,10", "add=a,1,3,10", "add=1,1,3,0"]
)
def test_a_malformed_switch_is_a_config_error(spec):
  with pytest.raises(ConfigError, match="--switch"):
    admission.parse(spec)


@pytest.fixture(scope="module")
def switched(tmp_path_factory):
  """A server whose model `add` admits 2 requests and then no more (q = 0: no refill)."""
  repo = tmp_path_factory.mktemp("switch_repo")
  repository.write_model(repo, "add", add_model())
  proc, port = start_server(repo, http_port=0, extra=["--switch=add=0,1,2,1000"])
  yield {"url": f"127.0.0.1:{port}", "http": f"127.0.0.1:{proc.http_port}"}
  stop_server(proc)


def test_refusals_through_the_runtime(switched):
  x = {"X": np.arange(4, dtype=np.uint8), "B": np.ones(4, np.float32)}
  client = dev.Client(switched["url"])
  client.connect()
  step = lambda k, obs: dev.Request("add", x, "Y")
  res = dev.run_stream(client, step, frames=6, fps=20.0, deadline_s=2.0)
  client.close()
  assert [r.status for r in res] == ["ok", "ok"] + ["refused"] * 4, [(r.status, r.error) for r in res]
  assert "RESOURCE_EXHAUSTED" in res[-1].error
  assert dev.summary(res, 2.0)["status"] == {"ok": 2, "late": 0, "lost": 0, "refused": 4}
  inputs = [{"name": "X", "datatype": "UINT8", "shape": [4], "data": [0, 1, 2, 3]}]
  inputs.append({"name": "B", "datatype": "FP32", "shape": [4], "data": [1.0, 1.0, 1.0, 1.0]})
  body = json.dumps({"inputs": inputs})
  req = urllib.request.Request(
    f"http://{switched['http']}/v2/models/add/infer", data=body.encode(), method="POST"
  )
  with pytest.raises(urllib.error.HTTPError) as e:
    urllib.request.urlopen(req, timeout=10)
  assert e.value.code == 429 and "switch" in json.loads(e.value.read())["error"]
  metrics = urllib.request.urlopen(f"http://{switched['http']}/metrics", timeout=10).read().decode()
  refusals = [
    line
    for line in metrics.splitlines()
    if line.startswith("edgeinfer_refusals_total{") and "RESOURCE_EXHAUSTED" in line
  ]
  assert sum(float(line.rsplit(" ", 1)[1]) for line in refusals) == 5, refusals
  print("refused over gRPC and HTTP:", refusals, file=sys.stderr)


def test_slots_are_counted_on_the_monotonic_clocks_grid():
  """A bucket made at 0.95 s refills at 1.0 s (a multiple of the slot), not at 1.05 s: device
  processes on the machine align their frames with the same grid."""
  now = [0.95]
  gate = admission.Bucket(1, 1, 1, slot_s=0.1, clock=lambda: now[0])
  assert gate.take() and not gate.take()
  now[0] = 0.999
  assert not gate.take()
  now[0] = 1.001
  assert gate.take()


def test_smart_switch_policy_and_a_closed_switch(tmp_path):
  """With thresholds a request that carries a metric is admitted only if also metric >= threshold[n]
  (one without a metric: the bucket alone); m = 0 is a switch that admits nothing."""
  inf = float("inf")
  now = [0.0]
  gate = admission.Bucket(1, 2, 4, slot_s=0.1, clock=lambda: now[0], thresholds=(inf, inf, 0.5, 0.4, 0.3))
  assert not gate.take(0.2) and gate.n == 4  # below threshold[4]: refused, nothing spent
  assert gate.take(0.35) and gate.n == 2
  assert not gate.take(0.45) and gate.take(None) and gate.n == 0
  assert not gate.take(9.0)  # n < p
  _, closed = admission.parse("add=5,1,0,10")
  assert not any(closed.take() for _ in range(5))
  (tmp_path / "p.json").write_text(json.dumps({"threshold": [None, None, 0.5, 0.4, 0.3]}))
  _, smart = admission.parse(f"add=1,2,4,100,{tmp_path / 'p.json'}")
  assert smart.thresholds == (inf, inf, 0.5, 0.4, 0.3) and smart.slot_s == 0.1
  (tmp_path / "short.json").write_text(json.dumps({"threshold": [0.1]}))
  with pytest.raises(ConfigError, match="m \\+ 1 = 5"):
    admission.parse(f"add=1,2,4,100,{tmp_path / 'short.json'}")
