"""Inputs sent entropy-coded: the server decompresses them (never past the declared size) before
the ONNX graph, here a codebook lookup; corrupt, short and oversized streams get INVALID_ARGUMENT
and the next good request is answered."""

import zlib

import numpy as np
import pytest
import tritonclient.grpc as tg
from tritonclient.utils import InferenceServerException

from common.errors import ServingError
from common.serving import codecs, repository, server, wire

SHAPE = (2, 3, 4)
CENTROIDS = np.asarray([0.5, 1.5, -2.0, 4.0], np.float32)


@pytest.mark.parametrize("name", codecs.NAMES)
def test_roundtrip_and_size_guard(name):
  data = bytes(np.random.default_rng(0).integers(0, 4, 64, dtype=np.uint8))
  blob = codecs.compress(name, data)
  assert codecs.decompress(name, blob, 64) == data
  for size in (63, 65):  # one byte too few or too many declared
    with pytest.raises(ServingError):
      codecs.decompress(name, blob, size)
  with pytest.raises(ServingError):
    codecs.decompress(name, b"\x00garbage" * 4, 64)


@pytest.fixture(scope="module")
def url(tmp_path_factory):
  repo = tmp_path_factory.mktemp("repo")
  repository.write_model(repo, "lookup", wire.codebook_decoder(SHAPE, CENTROIDS), codec=("zlib", "SYMBOLS"))
  srv, _, port = server.start(repository.load_repository(repo), port=0, workers=4)
  yield f"127.0.0.1:{port}"
  srv.stop(0)


def _infer(url, blob: bytes):
  c = tg.InferenceServerClient(url)
  x = tg.InferInput("SYMBOLS", [len(blob)], "UINT8")
  x.set_data_from_numpy(np.frombuffer(blob, np.uint8))
  try:
    return c.infer("lookup", [x]).as_numpy("z")
  finally:
    c.close()


def test_codec_model_decodes_and_looks_up(url):
  sym = np.random.default_rng(1).integers(0, 4, int(np.prod(SHAPE)), dtype=np.uint8)
  out = _infer(url, zlib.compress(sym.tobytes(), 9))
  np.testing.assert_array_equal(out, CENTROIDS[sym].reshape(1, *SHAPE))
  n = int(np.prod(SHAPE))
  for bad in (b"not zlib at all", zlib.compress(bytes(n - 1)), zlib.compress(bytes(100 * n))):
    with pytest.raises(InferenceServerException, match="INVALID_ARGUMENT|does not decode|decodes to"):
      _infer(url, bad)
  np.testing.assert_array_equal(_infer(url, zlib.compress(bytes(n))), np.full((1, *SHAPE), 0.5, np.float32))


def test_config_names_a_uint8_input(tmp_path):
  repository.write_model(
    tmp_path, "lookup", wire.codebook_decoder(SHAPE, CENTROIDS), codec=("bz2", "SYMBOLS")
  )
  assert repository.load_repository(tmp_path)["lookup"]["1"].codec == ("bz2", "SYMBOLS")
  cfg = tmp_path / "lookup" / "config.pbtxt"
  cfg.write_text(cfg.read_text().replace('"SYMBOLS" }', '"NOPE" }'))
  with pytest.raises(ServingError, match="edgeinfer_codec"):
    repository.load_repository(tmp_path)
