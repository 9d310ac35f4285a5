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


def slow_model(n: int = 1000, width: int = 1024):
  """Y = tanh(...tanh(X W)...) n times: a request that takes a while (for graceful shutdown)."""
  w = numpy_helper.from_array(
    np.random.default_rng(0).normal(0, 0.05, (width, width)).astype(np.float32), "W"
  )
  nodes, cur = [], "X"
  for i in range(n):
    nodes += [
      helper.make_node("MatMul", [cur, "W"], [f"m{i}"]),
      helper.make_node("Tanh", [f"m{i}"], [f"t{i}"]),
    ]
    cur = f"t{i}"
  nodes.append(helper.make_node("Identity", [cur], ["Y"]))
  g = helper.make_graph(
    nodes,
    "slow",
    [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, width])],
    [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, width])],
    initializer=[w],
  )
  return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


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
