"""Tiny hand-made ONNX graphs the serving tests serve."""

import numpy as np
from onnx import TensorProto, helper, numpy_helper


def add_model():
  """Y[4] = float(X uint8[4]) + B float[4]: an answer shows which request it belongs to."""
  g = helper.make_graph(
    [
      helper.make_node("Cast", ["X"], ["xf"], to=TensorProto.FLOAT),
      helper.make_node("Add", ["xf", "B"], ["Y"]),
    ],
    "add",
    [
      helper.make_tensor_value_info("X", TensorProto.UINT8, [4]),
      helper.make_tensor_value_info("B", TensorProto.FLOAT, [4]),
    ],
    [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [4])],
  )
  return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def slow_model(n: int = 200, rows: int = 256, width: int = 1024):
  """Y = mean over `rows` copies of tanh(...tanh(X W)...), n times: a request that takes a while (for
  graceful shutdown) on any host. Its work is n [rows, width] x [width, width] matmuls (107 GFLOP by
  default: about 0.8 s at 130 GFLOP/s), not n matrix-vector products, which a host with a large
  cache runs in tens of milliseconds."""
  w = numpy_helper.from_array(
    np.random.default_rng(0).normal(0, 0.05, (width, width)).astype(np.float32), "W"
  )
  shape = numpy_helper.from_array(np.asarray([rows, width], np.int64), "shape")
  axes = numpy_helper.from_array(np.asarray([0], np.int64), "axes")
  nodes, cur = [helper.make_node("Expand", ["X", "shape"], ["x0"])], "x0"
  for i in range(n):
    nodes += [
      helper.make_node("MatMul", [cur, "W"], [f"m{i}"]),
      helper.make_node("Tanh", [f"m{i}"], [f"t{i}"]),
    ]
    cur = f"t{i}"
  nodes.append(helper.make_node("ReduceMean", [cur, "axes"], ["Y"], keepdims=1))
  g = helper.make_graph(
    nodes,
    "slow",
    [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, width])],
    [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, width])],
    initializer=[w, shape, axes],
  )
  return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)


def echo_model(nbytes: int):
  """Y = sum of a uint8[nbytes] payload: a large request with a tiny answer (link throughput)."""
  g = helper.make_graph(
    [
      helper.make_node("Cast", ["X"], ["xf"], to=TensorProto.FLOAT),
      helper.make_node("ReduceSum", ["xf"], ["Y"], keepdims=1),
    ],
    "echo",
    [helper.make_tensor_value_info("X", TensorProto.UINT8, [nbytes])],
    [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1])],
  )
  return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
