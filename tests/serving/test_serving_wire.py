"""The wire format: b-bit packing round trips, `encode` matches coinfer's quantiser, the ONNX
decoder equals the NumPy one, and a decoder-fronted server graph equals the plain graph."""

import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from coinfer import compress
from common.errors import ServingError
from common.serving import wire


def _run(model, **feeds):
  sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
  return sess.run(None, feeds)


@settings(max_examples=60, deadline=None)
@given(bits=st.integers(1, 16), n=st.integers(1, 200), seed=st.integers(0, 2**16))
def test_pack_unpack_roundtrip(bits, n, seed):
  codes = np.random.default_rng(seed).integers(0, 2**bits, size=n)
  data = wire.pack(codes, bits)
  assert len(data) == wire.payload_bytes(n, bits) == -(-n * bits // 8)
  np.testing.assert_array_equal(wire.unpack(data, n, bits), codes)


def test_pack_layout_is_lsb_first():
  assert wire.pack(np.asarray([1, 0, 3, 2]), 2) == bytes([0b10_11_00_01])
  assert wire.pack(np.asarray([0x1234]), 16) == bytes([0x34, 0x12])


def test_pack_rejects_codes_too_wide_and_unpack_wrong_length():
  with pytest.raises(ServingError, match="does not fit"):
    wire.pack(np.asarray([4]), 2)
  with pytest.raises(ServingError, match="payload has 3 bytes"):
    wire.unpack(bytes(3), 4, 8)


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8, 16])
def test_encode_decode_matches_coinfer_quantiser(bits):
  z = np.random.default_rng(bits).normal(size=(1, 5, 3, 4)).astype(np.float32)
  z[..., 2] = 0.25  # a constant channel
  payload, ranges = wire.encode(z, bits)
  assert ranges.shape == (2, 4) and ranges.dtype == np.float32
  codes, mn, mx = compress.encode_np(z, bits)
  np.testing.assert_array_equal(wire.unpack(payload, z.size, bits).reshape(z.shape[1:]), codes[0])
  np.testing.assert_allclose(
    wire.decode(payload, ranges, z.shape[1:], bits), compress.decode_np(codes, mn, mx, bits)
  )


@pytest.mark.parametrize("bits", [1, 2, 5, 8, 16])
def test_onnx_decoder_equals_numpy(bits):
  shape = (3, 5, 2)
  z = np.random.default_rng(0).normal(size=(1, *shape)).astype(np.float32)
  payload, ranges = wire.encode(z, bits)
  (out,) = _run(wire.onnx_decoder(shape, bits), PAYLOAD=np.frombuffer(payload, np.uint8), RANGES=ranges)
  np.testing.assert_allclose(out, wire.decode(payload, ranges, shape, bits), rtol=1e-6, atol=1e-6)


def test_with_decoder_equals_server_on_decoded_tensor():
  w = numpy_helper.from_array(np.random.default_rng(1).normal(size=(3 * 2 * 4, 5)).astype(np.float32), "W")
  shape = numpy_helper.from_array(np.asarray([1, -1], np.int64), "s")
  g = helper.make_graph(
    [
      helper.make_node("Reshape", ["z_in", "s"], ["flat"]),
      helper.make_node("MatMul", ["flat", "W"], ["logits"]),
    ],
    "server",
    [helper.make_tensor_value_info("z_in", TensorProto.FLOAT, [1, 3, 2, 4])],
    [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 5])],
    initializer=[w, shape],
  )
  server = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
  served = wire.with_decoder(server, (3, 2, 4), 4)
  assert [i.name for i in served.graph.input] == ["PAYLOAD", "RANGES"] and served.graph.output[
    0
  ].name == "LOGITS"
  z = np.random.default_rng(2).normal(size=(1, 3, 2, 4)).astype(np.float32)
  payload, ranges = wire.encode(z, 4)
  (a,) = _run(served, PAYLOAD=np.frombuffer(payload, np.uint8), RANGES=ranges)
  (b,) = _run(server, z_in=wire.decode(payload, ranges, (3, 2, 4), 4))
  np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
