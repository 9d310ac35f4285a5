"""Export JAX functions to TFLite (phones; MCUs through TFLite Micro) and ONNX (servers).

The path that works with the pinned versions (see DESIGN.md):
`jax2tf.convert(fn, native_serialization=False, enable_xla=False)` -> a
`tf.function` with a fixed input signature -> `TFLiteConverter.from_concrete_functions`
(float, or full-integer int8 with a representative data set) -> the LiteRT
`Interpreter`; ONNX from the TFLite flatbuffer with `tf2onnx.convert.from_tflite`
-> onnxruntime. TensorFlow never sees a GPU.
"""

from __future__ import annotations

import dataclasses
import os
import re
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np

from common.errors import ExportError
from common.tfutil import hide_gpus_from_tf


def _as_list(x) -> list[np.ndarray]:
  if isinstance(x, list | tuple):
    return [np.asarray(a) for a in x]
  return [np.asarray(x)]


def to_tflite(
  apply_fn: Callable,
  example_input: np.ndarray | Sequence[np.ndarray],
  *,
  int8: bool = False,
  representative_data: Iterable[np.ndarray | Sequence[np.ndarray]] | None = None,
  int8_io: bool = True,
  name: str | None = None,
) -> bytes:
  """Converts a JAX function of fixed-shape arrays to a TFLite flatbuffer.

  Args:
    apply_fn: pure function of one or more positional arrays returning an
      array or a tuple of arrays; parameters are closed over.
    example_input: an array, or a list/tuple of arrays (one per positional
      argument), fixing the input shapes and dtypes.
    int8: full-integer quantisation (weights and activations int8).
    representative_data: with int8, an iterable of inputs like `example_input`
      (a few hundred real examples) for calibration.
    int8_io: with int8, make the model's inputs and outputs int8 too (what
      TFLite Micro wants); False keeps float32 input/output.
    name: function name in the flatbuffer (shows up in its signature).

  Returns:
    The flatbuffer bytes.
  """
  import tensorflow as tf
  from jax.experimental import jax2tf

  hide_gpus_from_tf()
  examples = _as_list(example_input)
  spec = [tf.TensorSpec(a.shape, tf.as_dtype(a.dtype), name=f"input_{i}") for i, a in enumerate(examples)]
  tf_fn = jax2tf.convert(apply_fn, native_serialization=False, enable_xla=False, with_gradient=False)
  module = tf.Module()
  module.f = tf.function(tf_fn, input_signature=spec, autograph=False)
  if name:
    module.f.__name__ = re.sub(r"\W", "_", name)
  concrete = module.f.get_concrete_function()
  converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], module)
  if int8:
    if representative_data is None:
      raise ExportError("int8 export needs representative_data (a few hundred real inputs)")
    rep = list(representative_data)
    if not rep:
      raise ExportError("int8 export: representative_data is empty")

    def gen():
      for item in rep:
        yield [a.astype(e.dtype) for a, e in zip(_as_list(item), examples, strict=True)]

    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = gen
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    if int8_io:
      converter.inference_input_type = tf.int8
      converter.inference_output_type = tf.int8
  try:
    return converter.convert()
  except Exception as e:  # noqa: BLE001
    raise ExportError(f"TFLite conversion failed: {e}") from e


# ------------------------------------------------------------------ running


@dataclasses.dataclass(frozen=True)
class TensorInfo:
  name: str
  shape: tuple[int, ...]
  dtype: np.dtype
  scale: float
  zero_point: int


def interpreter(tflite_bytes: bytes, num_threads: int = 1):
  """A LiteRT interpreter of a flatbuffer, its tensors allocated."""
  from ai_edge_litert.interpreter import Interpreter

  interp = Interpreter(model_content=tflite_bytes, num_threads=num_threads)
  interp.allocate_tensors()
  return interp


_interpreter = interpreter  # the name this module's functions use


def tflite_io(tflite_bytes: bytes) -> tuple[list[TensorInfo], list[TensorInfo]]:
  """Input and output tensor descriptions (shape, dtype, quantisation) of a flatbuffer."""
  interp = _interpreter(tflite_bytes)

  def info(d) -> TensorInfo:
    scale, zp = d.get("quantization", (0.0, 0))
    return TensorInfo(
      d["name"], tuple(int(s) for s in d["shape"]), np.dtype(d["dtype"]), float(scale), int(zp)
    )

  return [info(d) for d in interp.get_input_details()], [info(d) for d in interp.get_output_details()]


def quantize_input(x: np.ndarray, info: TensorInfo) -> np.ndarray:
  """Float -> the tensor's integer type with its scale and zero point."""
  if info.dtype == np.float32 or info.scale == 0.0:
    return x.astype(info.dtype)
  q = np.round(x / info.scale) + info.zero_point
  lim = np.iinfo(info.dtype)
  return np.clip(q, lim.min, lim.max).astype(info.dtype)


def dequantize_output(y: np.ndarray, info: TensorInfo) -> np.ndarray:
  """The tensor's integer values -> float32."""
  if info.dtype == np.float32 or info.scale == 0.0:
    return y.astype(np.float32)
  return ((y.astype(np.float32) - info.zero_point) * info.scale).astype(np.float32)


def make_tflite_runner(tflite_bytes: bytes, *, num_threads: int = 1) -> Callable[..., list[np.ndarray]]:
  """A function running the flatbuffer on float inputs, returning float outputs.

  Integer inputs/outputs are (de)quantised with the tensors' own parameters. The
  batch dimension of the inputs must match the exported one; use `run_tflite`
  for arbitrary batch sizes.
  """
  interp = _interpreter(tflite_bytes, num_threads)
  ins, outs = tflite_io(tflite_bytes)
  in_idx = [d["index"] for d in interp.get_input_details()]
  out_idx = [d["index"] for d in interp.get_output_details()]

  def run(*xs: np.ndarray) -> list[np.ndarray]:
    for i, x, info in zip(in_idx, xs, ins, strict=True):
      interp.set_tensor(i, quantize_input(np.asarray(x), info))
    interp.invoke()
    return [dequantize_output(interp.get_tensor(i), info) for i, info in zip(out_idx, outs, strict=True)]

  return run


def run_tflite(tflite_bytes: bytes, *inputs: np.ndarray, num_threads: int = 1) -> list[np.ndarray]:
  """Runs the flatbuffer over inputs of any batch size, in chunks of the exported batch.

  Returns float32 outputs (dequantised when the model is int8).
  """
  ins, _ = tflite_io(tflite_bytes)
  return run_in_batches(make_tflite_runner(tflite_bytes, num_threads=num_threads), ins[0].shape[0], inputs)


def litert_latency_us(tflite_bytes: bytes, example: np.ndarray, *, repeats: int, warmup: int = 20) -> float:
  """Median single-thread LiteRT invoke time in microseconds (batch of one)."""
  interp = _interpreter(tflite_bytes, num_threads=1)
  d = interp.get_input_details()[0]
  info = tflite_io(tflite_bytes)[0][0]
  interp.set_tensor(d["index"], quantize_input(example, info))
  for _ in range(warmup):
    interp.invoke()
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    interp.invoke()
    times.append(time.perf_counter() - t0)
  return statistics.median(times) * 1e6


def run_in_batches(
  runner: Callable[..., list[np.ndarray]], batch: int, inputs: Sequence[np.ndarray]
) -> list[np.ndarray]:
  """Runs a fixed-batch `runner` over inputs of any batch size (the last chunk padded, then cut)."""
  n = inputs[0].shape[0]
  chunks: list[list[np.ndarray]] = []
  for start in range(0, n, batch):
    part = [np.asarray(x[start : start + batch]) for x in inputs]
    m = part[0].shape[0]
    if m < batch:
      part = [np.concatenate([p, np.repeat(p[:1], batch - m, axis=0)]) for p in part]
    chunks.append([o[:m] for o in runner(*part)])
  return [np.concatenate([c[j] for c in chunks]) for j in range(len(chunks[0]))]


def tflite_to_onnx(tflite_bytes: bytes, *, opset: int = 17):
  """Converts a (float) TFLite flatbuffer to an `onnx.ModelProto` with tf2onnx."""
  import tf2onnx

  hide_gpus_from_tf()
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "model.tflite")
    with open(path, "wb") as f:
      f.write(tflite_bytes)
    try:
      model_proto, _ = tf2onnx.convert.from_tflite(path, opset=opset)
    except Exception as e:  # noqa: BLE001
      raise ExportError(f"ONNX conversion of the TFLite model failed: {e}") from e
  return model_proto


def run_onnx(model, *inputs: np.ndarray) -> list[np.ndarray]:
  """Runs an `onnx.ModelProto` (or serialized bytes) with onnxruntime on the CPU."""
  import onnxruntime as ort

  data = model if isinstance(model, bytes) else model.SerializeToString()
  sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
  names = [i.name for i in sess.get_inputs()]
  shapes = [i.shape for i in sess.get_inputs()]
  b = shapes[0][0] if isinstance(shapes[0][0], int) else None
  n = inputs[0].shape[0]
  if b is None or b == n:
    return sess.run(None, dict(zip(names, [np.asarray(x, np.float32) for x in inputs], strict=True)))
  chunks = []
  for start in range(0, n, b):
    part = [np.asarray(x[start : start + b], np.float32) for x in inputs]
    m = part[0].shape[0]
    if m < b:
      part = [np.concatenate([p, np.repeat(p[:1], b - m, axis=0)]) for p in part]
    chunks.append([o[:m] for o in sess.run(None, dict(zip(names, part, strict=True)))])
  return [np.concatenate([c[j] for c in chunks]) for j in range(len(chunks[0]))]


@dataclasses.dataclass(frozen=True)
class Parity:
  """How exported models agree with JAX on the same inputs."""

  tflite_max_abs_err: float
  onnx_max_abs_err: float | None
  tflite_top1_agreement: float
  onnx_top1_agreement: float | None

  def as_dict(self) -> dict:
    return dataclasses.asdict(self)


def check_parity(
  jax_fn: Callable[[np.ndarray], np.ndarray],
  tflite_bytes: bytes,
  inputs: np.ndarray,
  *,
  onnx_model=None,
) -> Parity:
  """Runs JAX, LiteRT and (optionally) onnxruntime on `inputs`; compares the first output.

  Reports the max abs error (meaningful for float exports) and top-1 agreement
  (meaningful for int8 exports and classifiers).
  """
  ref = np.asarray(jax_fn(inputs))
  lite = run_tflite(tflite_bytes, inputs)[0]
  onnx_out = run_onnx(onnx_model, inputs)[0] if onnx_model is not None else None

  def err(a):
    return float(np.max(np.abs(a.astype(np.float32) - ref.astype(np.float32))))

  def agree(a):
    return float(np.mean(np.argmax(a, -1) == np.argmax(ref, -1)))

  return Parity(
    tflite_max_abs_err=err(lite),
    onnx_max_abs_err=None if onnx_out is None else err(onnx_out),
    tflite_top1_agreement=agree(lite),
    onnx_top1_agreement=None if onnx_out is None else agree(onnx_out),
  )


def to_c_array(tflite_bytes: bytes, name: str, out_dir: str | os.PathLike | None = None) -> dict:
  """Writes `<name>.h` / `<name>.cc` holding the flatbuffer for TFLite Micro.

  Args:
    tflite_bytes: the flatbuffer.
    name: a C identifier; the array is `g_<name>` and its length `g_<name>_len`.
    out_dir: where to write; None returns the texts without writing.

  Returns:
    {"header": str, "source": str, "model_bytes": int, "paths": [..]}.
  """
  if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
    raise ExportError(f"C array name {name!r} is not a C identifier")
  n = len(tflite_bytes)
  guard = f"EDGEINFER_{name.upper()}_H_"
  header = (
    f"// Generated by edgeinfer: TFLite flatbuffer for TFLite Micro ({n} bytes).\n"
    f"#ifndef {guard}\n#define {guard}\n\n"
    f"extern const unsigned char g_{name}[];\n"
    f"extern const unsigned int g_{name}_len;\n\n#endif  // {guard}\n"
  )
  rows = []
  for start in range(0, n, 12):
    rows.append("  " + ", ".join(f"0x{b:02x}" for b in tflite_bytes[start : start + 12]) + ",")
  source = (
    f'#include "{name}.h"\n\n'
    f"// Model size: {n} bytes. Aligned for TFLite Micro.\n"
    f"alignas(16) const unsigned char g_{name}[] = {{\n" + "\n".join(rows) + "\n};\n"
    f"const unsigned int g_{name}_len = {n};\n"
  )
  paths = []
  if out_dir is not None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for suffix, text in ((".h", header), (".cc", source)):
      paths.append(str(write_atomic(out / f"{name}{suffix}", text.encode())))
  return {"header": header, "source": source, "model_bytes": n, "paths": paths}


def _umask_mode() -> int:
  """The mode `open()` would give a new file under the process's umask (0o666 & ~umask)."""
  try:  # Linux reports the umask without changing it (os.umask would, for every thread).
    with open("/proc/self/status") as f:
      mask = next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
  except (OSError, StopIteration, ValueError):
    mask = os.umask(0)
    os.umask(mask)
  return 0o666 & ~mask


def write_atomic(path: str | os.PathLike, data: bytes) -> Path:
  """Writes bytes to a temporary name beside `path`, then renames it into place.

  The file gets the mode a plain `open(path, "w")` would give it (0o666 less the umask), not
  the 0o600 of `tempfile.mkstemp`, so reports and exports stay readable on a shared machine.

  In a multi-host run only the primary process writes (the others return `path`).
  """
  from common.sharding import is_primary

  path = Path(path)
  if not is_primary():
    return path
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
  try:
    os.fchmod(fd, _umask_mode())
    with os.fdopen(fd, "wb") as f:
      f.write(data)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise
  return path


def save_onnx(model, path: str | os.PathLike) -> Path:
  """Saves an `onnx.ModelProto` atomically."""
  return write_atomic(path, model.SerializeToString())


def tflite_tensor_names(tflite_bytes: bytes) -> list[str]:
  """Names of all tensors in the flatbuffer (e.g. to find op tags)."""
  interp = _interpreter(tflite_bytes)
  return [d["name"] for d in interp.get_tensor_details()]
