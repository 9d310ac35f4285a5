"""A Triton-style model repository: `<repo>/<model>/<version>/model.onnx` plus
`<repo>/<model>/config.pbtxt` (the text format of Triton's `ModelConfig`, parsed with the
`model_config_pb2` that tritonclient ships), so that a stock Triton server serves the same
directory. Models run in onnxruntime; `write_model` writes one model in this layout.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np

from common.errors import ServingError

# Triton's TYPE_* (model config) <-> the protocol's datatype strings <-> NumPy
DTYPES = {
  "TYPE_BOOL": ("BOOL", np.bool_),
  "TYPE_UINT8": ("UINT8", np.uint8),
  "TYPE_UINT16": ("UINT16", np.uint16),
  "TYPE_INT8": ("INT8", np.int8),
  "TYPE_INT16": ("INT16", np.int16),
  "TYPE_INT32": ("INT32", np.int32),
  "TYPE_INT64": ("INT64", np.int64),
  "TYPE_FP16": ("FP16", np.float16),
  "TYPE_FP32": ("FP32", np.float32),
  "TYPE_FP64": ("FP64", np.float64),
}
_ORT_TYPES = {
  "tensor(bool)": "BOOL",
  "tensor(uint8)": "UINT8",
  "tensor(uint16)": "UINT16",
  "tensor(int8)": "INT8",
  "tensor(int16)": "INT16",
  "tensor(int32)": "INT32",
  "tensor(int64)": "INT64",
  "tensor(float16)": "FP16",
  "tensor(float)": "FP32",
  "tensor(double)": "FP64",
}
NUMPY = {v[0]: v[1] for v in DTYPES.values()}


@dataclasses.dataclass(frozen=True)
class TensorSpec:
  name: str
  datatype: str  # protocol string, e.g. "FP32"
  shape: tuple[int, ...]

  @property
  def nbytes(self) -> int:
    return int(np.prod(self.shape)) * np.dtype(NUMPY[self.datatype]).itemsize


@dataclasses.dataclass
class Model:
  name: str
  version: str
  inputs: tuple[TensorSpec, ...]
  outputs: tuple[TensorSpec, ...]
  session: object  # onnxruntime.InferenceSession

  def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return self.session.run([o.name for o in self.outputs], feeds)


def _parse_config(path: Path):
  from google.protobuf import text_format
  from tritonclient.grpc import model_config_pb2

  try:
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
  except text_format.ParseError as e:
    raise ServingError(f"{path}: not a valid Triton model config ({e})") from None


def _specs(path: Path, entries, what: str) -> tuple[TensorSpec, ...]:
  from tritonclient.grpc import model_config_pb2

  out = []
  for e in entries:
    t = model_config_pb2.DataType.Name(e.data_type)
    if not e.name or t not in DTYPES or not e.dims or any(d < 1 for d in e.dims):
      raise ServingError(
        f"{path}: {what} {e.name or '(no name)'!r} needs a name, a data_type in {sorted(DTYPES)} and fixed dims >= 1"
      )
    out.append(TensorSpec(e.name, DTYPES[t][0], tuple(int(d) for d in e.dims)))
  if not out:
    raise ServingError(f"{path}: the config declares no {what}")
  return tuple(out)


def _check_onnx(path: Path, session, specs: tuple[TensorSpec, ...], actual, what: str) -> None:
  got = {a.name: a for a in actual}
  if set(got) != {s.name for s in specs}:
    raise ServingError(
      f"{path}: ONNX {what} are {sorted(got)}, the config says {sorted(s.name for s in specs)}"
    )
  for s in specs:
    a = got[s.name]
    dims = tuple(d if isinstance(d, int) else -1 for d in a.shape)
    if (
      _ORT_TYPES.get(a.type) != s.datatype
      or (len(dims) != len(s.shape))
      or any(d not in (-1, e) for d, e in zip(dims, s.shape, strict=True))
    ):
      raise ServingError(
        f"{path}: ONNX {what[:-1]} {s.name!r} is {a.type} {dims}, the config says {s.datatype} {s.shape}"
      )


def session(model_or_path):
  """An onnxruntime CPU session (one thread) of an ONNX model, its bytes or its path."""
  import onnxruntime as ort

  opts = ort.SessionOptions()
  opts.intra_op_num_threads = 1
  opts.inter_op_num_threads = 1
  src = (
    model_or_path.SerializeToString() if hasattr(model_or_path, "SerializeToString") else str(model_or_path)
  )
  return ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])


def load_model(model_dir: Path) -> list[Model]:
  """Every version of one model directory (raises ServingError naming what is missing or wrong)."""
  model_dir = Path(model_dir)
  cfg_path = model_dir / "config.pbtxt"
  if not cfg_path.exists():
    raise ServingError(f"{cfg_path} is missing: every model directory needs a config.pbtxt")
  cfg = _parse_config(cfg_path)
  if cfg.name and cfg.name != model_dir.name:
    raise ServingError(f"{cfg_path}: name {cfg.name!r} differs from the directory name {model_dir.name!r}")
  if cfg.platform not in ("", "onnxruntime_onnx") or cfg.backend not in ("", "onnxruntime"):
    raise ServingError(
      f"{cfg_path}: platform {cfg.platform!r} / backend {cfg.backend!r}: only ONNX models are served"
    )
  if cfg.max_batch_size != 0:
    raise ServingError(
      f"{cfg_path}: max_batch_size {cfg.max_batch_size}: this server serves max_batch_size 0 (full dims)"
    )
  inputs, outputs = _specs(cfg_path, cfg.input, "inputs"), _specs(cfg_path, cfg.output, "outputs")
  versions = sorted(
    (p for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name)
  )
  if not versions:
    raise ServingError(f"{model_dir}: no numeric version directory (expected {model_dir}/1/model.onnx)")
  out = []
  for v in versions:
    onnx_path = v / "model.onnx"
    if not onnx_path.exists():
      raise ServingError(f"{onnx_path} is missing: the repository is partial; re-export it")
    try:
      sess = session(onnx_path)
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own untyped errors
      raise ServingError(
        f"{onnx_path}: onnxruntime cannot load it ({str(e).splitlines()[0][:200]})"
      ) from None
    _check_onnx(onnx_path, sess, inputs, sess.get_inputs(), "inputs")
    _check_onnx(onnx_path, sess, outputs, sess.get_outputs(), "outputs")
    out.append(Model(model_dir.name, v.name, inputs, outputs, sess))
  return out


def load_repository(repo: str | os.PathLike) -> dict[str, dict[str, Model]]:
  """{model name: {version: Model}} of every model directory under `repo`."""
  repo = Path(repo)
  if not repo.is_dir():
    raise ServingError(f"model repository {repo} does not exist; export one first (see docs/deploy.md)")
  models = {}
  for d in sorted(p for p in repo.iterdir() if p.is_dir() and not p.name.startswith(".")):
    models[d.name] = {m.version: m for m in load_model(d)}
  if not models:
    raise ServingError(f"model repository {repo} holds no model directory")
  return models


def _pbtxt_tensor(spec: TensorSpec) -> str:
  t = next(k for k, v in DTYPES.items() if v[0] == spec.datatype)
  return f'  {{\n    name: "{spec.name}"\n    data_type: {t}\n    dims: [ {", ".join(map(str, spec.shape))} ]\n  }}'


def config_text(name: str, inputs, outputs) -> str:
  """config.pbtxt of an ONNX model with fixed shapes (max_batch_size 0: dims are full shapes)."""
  ins = ",\n".join(_pbtxt_tensor(s) for s in inputs)
  outs = ",\n".join(_pbtxt_tensor(s) for s in outputs)
  return f'name: "{name}"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 0\ninput [\n{ins}\n]\noutput [\n{outs}\n]\n'


def write_model(repo: str | os.PathLike, name: str, onnx_model, *, version: int = 1) -> Path:
  """Writes `<repo>/<name>/<version>/model.onnx` and `<repo>/<name>/config.pbtxt` (atomically),
  the tensors taken from the ONNX graph, which must have fixed shapes."""
  from onnx import helper

  def spec(v):
    dims = tuple(d.dim_value for d in v.type.tensor_type.shape.dim)
    if any(d < 1 for d in dims):
      raise ServingError(f"model {name}: tensor {v.name!r} has a dynamic shape {dims}; export fixed shapes")
    onnx_t = helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type)
    dt = next(k for k, t in NUMPY.items() if np.dtype(t) == onnx_t)
    return TensorSpec(v.name, dt, dims)

  init = {t.name for t in onnx_model.graph.initializer}
  inputs = [spec(v) for v in onnx_model.graph.input if v.name not in init]
  outputs = [spec(v) for v in onnx_model.graph.output]
  d = Path(repo) / name
  (d / str(version)).mkdir(parents=True, exist_ok=True)
  from common.export import write_atomic

  write_atomic(d / str(version) / "model.onnx", onnx_model.SerializeToString())
  write_atomic(d / "config.pbtxt", config_text(name, inputs, outputs).encode())
  return d
