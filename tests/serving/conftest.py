"""Model repositories built from tiny hand-made ONNX graphs, and a real server process on them."""

import pytest

from common.serving import repository
from common.serving.process import start_server, stop_server
from tests.serving.tiny_models import add_model, slow_model


@pytest.fixture(scope="module")
def tiny_repo(tmp_path_factory):
  repo = tmp_path_factory.mktemp("repo")
  repository.write_model(repo, "add", add_model())
  repository.write_model(repo, "slow", slow_model())
  return repo


@pytest.fixture(scope="module")
def server(tiny_repo, tmp_path_factory):
  """A `python -m launch.serve` process on 127.0.0.1 (free port) with a 64 KiB message limit."""
  stats = tmp_path_factory.mktemp("stats") / "stats.json"
  proc, port = start_server(
    tiny_repo, stats=stats, extra=[f"--max_message_bytes={64 << 10}", "--stats_every=0.2"]
  )
  yield {"proc": proc, "port": port, "url": f"127.0.0.1:{port}", "stats": stats}
  stop_server(proc)


@pytest.fixture(scope="module")
def http_server(tiny_repo):
  """A `python -m launch.serve` process with gRPC and HTTP (free ports), a 64 KiB message limit."""
  proc, port = start_server(tiny_repo, http_port=0, extra=[f"--max_message_bytes={64 << 10}"])
  yield {"proc": proc, "url": f"127.0.0.1:{port}", "http": f"127.0.0.1:{proc.http_port}"}
  stop_server(proc)
