"""Wire format of a split tensor: codes packed at b bits, plus two floats per channel.

A device quantises its [1, H, W, c] split tensor per channel to b-bit codes (min-max, see
`coinfer.compress.encode_np`) and sends two tensors:

  PAYLOAD  UINT8 [ceil(H W c b / 8)]  the codes in C order (h, w, channel), each code's b bits
                                       least-significant first, bits packed into bytes LSB first
  RANGES   FP32  [2, c]               row 0 the per-channel minimum, row 1 the maximum

`pack`/`unpack` are the NumPy reference; `onnx_decoder` builds the same unpacking and
dequantisation as an ONNX graph (BitShift, Mod, MatMul), so the server model of a model
repository takes the wire tensors directly and a stock Triton server can serve it unchanged.
"""

from __future__ import annotations

import math

import numpy as np

from common.errors import ServingError

RANGE_GUARD = 1e-6  # a channel whose max - min is below this is constant (as coinfer.compress)


def payload_bytes(count: int, bits: int) -> int:
  """Bytes of `count` codes at `bits` bits."""
  return math.ceil(count * bits / 8)


def _check_bits(bits: int) -> None:
  if not 1 <= int(bits) <= 16:
    raise ServingError(f"bits = {bits}: must be in [1, 16]")


def pack(codes: np.ndarray, bits: int) -> bytes:
  """Packs non-negative integer codes (any shape, C order) at `bits` bits each."""
  _check_bits(bits)
  flat = np.asarray(codes).reshape(-1).astype(np.uint32)
  if flat.size and int(flat.max()) >= 1 << bits:
    raise ServingError(f"a code is {int(flat.max())}, which does not fit in {bits} bits")
  if bits == 8:
    return flat.astype(np.uint8).tobytes()
  planes = ((flat[:, None] >> np.arange(bits, dtype=np.uint32)) & 1).astype(np.uint8)
  return np.packbits(planes.reshape(-1), bitorder="little").tobytes()


def unpack(data: bytes | np.ndarray, count: int, bits: int) -> np.ndarray:
  """Inverse of `pack`: `count` codes as uint16 [count]."""
  _check_bits(bits)
  raw = np.frombuffer(data, np.uint8) if isinstance(data, bytes | bytearray) else np.asarray(data, np.uint8)
  if raw.size != payload_bytes(count, bits):
    raise ServingError(
      f"payload has {raw.size} bytes; {count} codes at {bits} bits need {payload_bytes(count, bits)}"
    )
  if bits == 8:
    return raw.astype(np.uint16)
  planes = np.unpackbits(raw, bitorder="little")[: count * bits].reshape(count, bits).astype(np.uint32)
  return (planes << np.arange(bits, dtype=np.uint32)).sum(axis=1).astype(np.uint16)


def encode(z: np.ndarray, bits: int) -> tuple[bytes, np.ndarray]:
  """[1, H, W, c] float tensor -> (PAYLOAD bytes, RANGES float32 [2, c])."""
  z = np.asarray(z, np.float32)
  if z.ndim != 4 or z.shape[0] != 1:
    raise ServingError(f"encode wants one [1, H, W, c] tensor, got shape {z.shape}")
  mn, mx = z.min(axis=(0, 1, 2)), z.max(axis=(0, 1, 2))
  span = mx - mn
  safe = np.where(span < RANGE_GUARD, 1.0, span).astype(np.float32)
  levels = np.float32(2**bits - 1)
  codes = np.round((z[0] - mn) * levels / safe)
  return pack(codes, bits), np.stack([mn, mx]).astype(np.float32)


def decode(payload: bytes | np.ndarray, ranges: np.ndarray, shape: tuple, bits: int) -> np.ndarray:
  """(PAYLOAD, RANGES) -> float32 [1, *shape] with shape = (H, W, c)."""
  count = int(np.prod(shape))
  codes = unpack(payload, count, bits).reshape(shape).astype(np.float32)
  mn, mx = np.asarray(ranges, np.float32)
  span = mx - mn
  safe = np.where(span < RANGE_GUARD, 1.0, span).astype(np.float32)
  return (mn + codes * safe / np.float32(2**bits - 1))[None].astype(np.float32)


def _decoder_initializers(h: int, w: int, c: int, bits: int) -> list:
  from onnx import numpy_helper

  count = h * w * c
  n = payload_bytes(count, bits)
  consts = {
    "shifts": np.arange(8, dtype=np.uint8)[None, :],
    "two": np.asarray([2], np.uint8),
    "flat": np.asarray([n * 8], np.int64),
    "starts": np.asarray([0], np.int64),
    "ends": np.asarray([count * bits], np.int64),
    "code_shape": np.asarray([count, bits], np.int64),
    "powers": (2.0 ** np.arange(bits, dtype=np.float32))[:, None].astype(np.float32),
    "out_shape": np.asarray([1, h, w, c], np.int64),
    "axis1": np.asarray([1], np.int64),
    "guard": np.asarray(RANGE_GUARD, np.float32),
    "one": np.asarray(1.0, np.float32),
    "inv_levels": np.asarray(1.0 / (2**bits - 1), np.float32),
    "idx0": np.asarray(0, np.int64),
    "idx1": np.asarray(1, np.int64),
  }
  return [numpy_helper.from_array(np.asarray(v), k) for k, v in consts.items()]


def _decoder_nodes(out_name: str) -> list:
  from onnx import TensorProto, helper

  return [
    helper.make_node("Unsqueeze", ["PAYLOAD", "axis1"], ["p2"]),
    helper.make_node("BitShift", ["p2", "shifts"], ["sh"], direction="RIGHT"),
    helper.make_node("Mod", ["sh", "two"], ["bit"]),
    helper.make_node("Reshape", ["bit", "flat"], ["bits_all"]),
    helper.make_node("Slice", ["bits_all", "starts", "ends"], ["bits_used"]),
    helper.make_node("Reshape", ["bits_used", "code_shape"], ["bits_mat"]),
    helper.make_node("Cast", ["bits_mat"], ["bits_f"], to=TensorProto.FLOAT),
    helper.make_node("MatMul", ["bits_f", "powers"], ["codes"]),
    helper.make_node("Reshape", ["codes", "out_shape"], ["q"]),
    helper.make_node("Gather", ["RANGES", "idx0"], ["mn"], axis=0),
    helper.make_node("Gather", ["RANGES", "idx1"], ["mx"], axis=0),
    helper.make_node("Sub", ["mx", "mn"], ["span"]),
    helper.make_node("Less", ["span", "guard"], ["flat_ch"]),
    helper.make_node("Where", ["flat_ch", "one", "span"], ["safe"]),
    helper.make_node("Mul", ["safe", "inv_levels"], ["scale"]),
    helper.make_node("Mul", ["q", "scale"], ["qs"]),
    helper.make_node("Add", ["qs", "mn"], [out_name]),
  ]


def onnx_decoder(shape: tuple, bits: int, *, out_name: str = "z", opset: int = 17):
  """An ONNX graph (PAYLOAD uint8 [n], RANGES float [2, c]) -> `out_name` float [1, H, W, c]
  equal to `decode`. Bits are taken out of each byte with BitShift and Mod 2, and each code
  is the dot product of its b bits with the powers of two."""
  import onnx
  from onnx import TensorProto, helper

  _check_bits(bits)
  h, w, c = (int(v) for v in shape)
  n = payload_bytes(h * w * c, bits)
  graph = helper.make_graph(
    _decoder_nodes(out_name),
    "wire_decoder",
    [
      helper.make_tensor_value_info("PAYLOAD", TensorProto.UINT8, [n]),
      helper.make_tensor_value_info("RANGES", TensorProto.FLOAT, [2, c]),
    ],
    [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, [1, h, w, c])],
    initializer=_decoder_initializers(h, w, c, bits),
  )
  model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
  onnx.checker.check_model(model)
  return model


def codebook_decoder(
  shape: tuple, centroids, *, in_name: str = "SYMBOLS", out_name: str = "z", opset: int = 17
):
  """An ONNX graph (`in_name` uint8 [H W c], codebook indices in C order) -> `out_name` float
  [1, H, W, c], each index replaced by its centroid (scalar quantisation, as AgileNN's)."""
  import onnx
  from onnx import TensorProto, helper, numpy_helper

  h, w, c = (int(v) for v in shape)
  inits = [
    numpy_helper.from_array(np.asarray(centroids, np.float32).reshape(-1), "centroids"),
    numpy_helper.from_array(np.asarray([1, h, w, c], np.int64), "out_shape"),
  ]
  nodes = [
    helper.make_node("Cast", [in_name], ["idx"], to=TensorProto.INT64),
    helper.make_node("Gather", ["centroids", "idx"], ["values"], axis=0),
    helper.make_node("Reshape", ["values", "out_shape"], [out_name]),
  ]
  graph = helper.make_graph(
    nodes,
    "codebook_decoder",
    [helper.make_tensor_value_info(in_name, TensorProto.UINT8, [h * w * c])],
    [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, [1, h, w, c])],
    initializer=inits,
  )
  model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
  onnx.checker.check_model(model)
  return model


def with_decoder(server_model, shape: tuple, bits: int, *, output_name: str = "LOGITS"):
  """Prepends `onnx_decoder` to a server ONNX model of one float input [1, H, W, c]; the
  result takes (PAYLOAD, RANGES) and its one output is renamed `output_name`."""
  return prepend(
    lambda opset: onnx_decoder(shape, bits, out_name="dec/z", opset=opset), server_model, output_name
  )


def prepend(make_decoder, server_model, output_name: str = "LOGITS"):
  """`make_decoder(opset)` (a graph whose one output is `dec/z`) in front of a server ONNX model
  of one float input; the merged model's one output is renamed `output_name`."""
  import onnx
  from onnx import compose

  opset = next((o.version for o in server_model.opset_import if o.domain in ("", "ai.onnx")), 17)
  inputs = [
    i.name for i in server_model.graph.input if i.name not in {t.name for t in server_model.graph.initializer}
  ]
  if len(inputs) != 1 or len(server_model.graph.output) != 1:
    raise ServingError(
      f"the server model must have one input and one output, has {inputs} and {len(server_model.graph.output)}"
    )
  server = compose.add_prefix(server_model, "srv/")
  dec = make_decoder(opset)
  dec.ir_version = server.ir_version
  merged = compose.merge_models(dec, server, io_map=[("dec/z", "srv/" + inputs[0])])
  old = merged.graph.output[0].name
  for node in merged.graph.node:
    node.output[:] = [output_name if o == old else o for o in node.output]
  merged.graph.output[0].name = output_name
  onnx.checker.check_model(merged)
  return merged
