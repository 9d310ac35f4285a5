"""TensorFlow Lite Micro on the host: does an int8 export run on a microcontroller, and in how much RAM.

A microcontroller runs TFLite Micro (TFLM), not LiteRT: its own kernels (the portable reference
kernels here), its own op set and one fixed tensor arena. `check_int8` loads a flatbuffer into
TFLM's own interpreter (the `tflite-micro` package) with the target device's RAM as the arena,
measures the smallest arena that allocates (bisection on the arena size, cross-checked against
the recording allocator's total), runs the parity images at that smallest arena and compares the
outputs with LiteRT's on the same images. It raises `ExportError` naming the op when TFLM has no
kernel for one, and naming both sizes when the arena does not fit the target's RAM, so that an
exporter calls it before writing anything.
"""

from __future__ import annotations

import contextlib
import dataclasses
import faulthandler
import os
import re
import tempfile
from collections.abc import Callable, Iterator

import numpy as np

from common.errors import ExportError

ARENA_STEP = 16  # TFLM aligns arena buffers to 16 bytes; the bisection resolves the arena to this step
DEFAULT_TARGET_RAM_BYTES = 320 * 1024
# TFLM places its own allocator in the arena and crashes (instead of failing) on arenas below about
# 496 bytes; no model fits in that, so smaller ones count as failing without a try.
MIN_ARENA_BYTES = 512  # STM32F746 (Cortex-M7): 320 KB SRAM, 1 MB flash


@dataclasses.dataclass(frozen=True)
class MicroCheck:
  """What TFLM says about one int8 flatbuffer.

  arena_bytes: the smallest tensor arena TFLM allocates the model in (bisection, `ARENA_STEP` bytes);
    the parity images ran at exactly this arena, and `arena_bytes - ARENA_STEP` fails to allocate.
  recorded_arena_bytes: the recording allocator's total (head + tail) at the RAM-sized arena.
  flash_bytes: the flatbuffer (what the C array puts in flash).
  max_abs_diff: largest |TFLM - LiteRT| over every output element of the parity images, in the
    outputs' own (dequantised) units; max_lsb_diff the same in quantisation steps (None for a
    float output whose scale the flatbuffer does not carry); mismatch_fraction the share of output
    elements that differ by at least one step; divergent_ops where the difference starts (see
    `divergent_ops`), empty when bit-exact.
  """

  ops: tuple[str, ...]
  arena_bytes: int
  recorded_arena_bytes: int
  ram_bytes: int
  flash_bytes: int
  images: int
  max_abs_diff: float
  max_lsb_diff: int | None
  mismatch_fraction: float
  divergent_ops: tuple[str, ...] = ()

  @property
  def fits(self) -> bool:
    return self.arena_bytes <= self.ram_bytes

  @property
  def bit_exact(self) -> bool:
    return self.mismatch_fraction == 0.0

  def as_dict(self, prefix: str = "micro_") -> dict:
    d = dataclasses.asdict(self)
    d["ops"], d["divergent_ops"] = list(self.ops), list(self.divergent_ops)
    d |= {"fits": self.fits, "bit_exact": self.bit_exact}
    return {f"{prefix}{k}": v for k, v in d.items()}


def model_ops(tflite_bytes: bytes) -> list[str]:
  """The builtin (or custom) op names the flatbuffer's operators use, in first-use order."""
  model = _flatbuffer(tflite_bytes)
  seen: list[str] = []
  for sub in model.subgraphs or []:
    for op in sub.operators or []:
      if (name := _op_name(model, op)) not in seen:
        seen.append(name)
  return seen


@contextlib.contextmanager
def _captured_stderr() -> Iterator[list[str]]:
  """Captures what C code writes to file descriptor 2 (TFLM's MicroPrintf) into out[0]."""
  out = [""]
  with tempfile.TemporaryFile(mode="w+b") as tmp:
    saved = os.dup(2)
    os.dup2(tmp.fileno(), 2)
    try:
      yield out
    finally:
      os.dup2(saved, 2)
      os.close(saved)
      tmp.seek(0)
      out[0] = tmp.read().decode(errors="replace")


class _LoadFailed(Exception):
  def __init__(self, log: str):
    super().__init__(log)
    self.log = log


def _load(tflite_bytes: bytes, arena_size: int, *, probed: bool = False):
  """A TFLM interpreter with the given arena (recording allocator); _LoadFailed carries TFLM's log.

  probed: the arena is known to load (skips the crash-safe `probe` in a child first).
  """
  from tflite_micro.python.tflite_micro import runtime

  ok, log = (True, "") if probed else probe(tflite_bytes, arena_size)
  if not ok:
    raise _LoadFailed(log)
  with _captured_stderr() as log:
    try:
      interp = runtime.Interpreter.from_bytes(bytes(tflite_bytes), arena_size=int(arena_size))
    except RuntimeError as e:
      err = e
    else:
      err = None
  if err is not None:
    raise _LoadFailed(f"{log[0]}\n{err}")
  return interp


def interpreter(tflite_bytes: bytes, arena_size: int, *, probed: bool = False):
  """A TFLM interpreter (recording allocator) over an arena of `arena_size` bytes; ExportError if it fails.

  probed: `arena_size` is known to load (e.g. measured by `smallest_arena_bytes`), so it is built
  here directly, without first trying it in a forked child.
  """
  try:
    return _load(tflite_bytes, arena_size, probed=probed)
  except _LoadFailed as e:
    raise _refuse("model", e.log, tflite_bytes, arena_size, "arena_size") from None


def native_builder(tflite_bytes: bytes, arena_size: int) -> Callable[[], object]:
  """A function building TFLM's C++ interpreter over a fresh `arena_size`-byte arena, as a device
  does on a model switch: parse, kernel init/prepare, memory planning.

  The Python `Interpreter` wrapper first turns the whole flatbuffer into Python objects to count
  resource variables (tens of ms, nothing a device does); that count is taken once here, so a
  call times TFLM's own work. The arena must be known to load (`smallest_arena_bytes`).
  """
  from tflite_micro.python.tflite_micro import _runtime, runtime

  data, variables = bytes(tflite_bytes), runtime.count_resource_variables(bytearray(tflite_bytes))
  config = _runtime.PythonInterpreterConfig.kAllocationRecording
  return lambda: _runtime.InterpreterWrapper(data, [], int(arena_size), variables, config, 0)


def _missing_op(log: str) -> str | None:
  m = re.search(r"Didn't find op for builtin opcode '([^']+)'", log) or re.search(
    r"Failed to get registration from op code (\S+)", log
  )
  return m.group(1) if m else None


def _is_allocation_failure(log: str) -> bool:
  return bool(re.search(r"Failed to (allocate|resize buffer)|missing: \d+", log))


def recorded_arena_bytes(interp) -> int:
  """The recording allocator's 'Arena allocation total' of a loaded interpreter."""
  with _captured_stderr() as log:
    interp.print_allocations()
  m = re.search(r"Arena allocation total (\d+) bytes", log[0])
  if not m:
    raise ExportError(f"TFLM's recording allocator printed no arena total: {log[0][:300]!r}")
  return int(m.group(1))


def probe(tflite_bytes: bytes, arena_size: int) -> tuple[bool, str]:
  """Whether TFLM allocates the model in an arena of `arena_size` bytes, and TFLM's log.

  Runs in a forked child: on some too-small arenas TFLM's host build reads an underflowed size
  after an allocation failed and crashes rather than failing, and a crash then only means "no".
  """
  import warnings

  from tflite_micro.python.tflite_micro import runtime

  if arena_size < MIN_ARENA_BYTES:
    return False, f"Failed to allocate: a {arena_size}-byte arena is below {MIN_ARENA_BYTES} bytes"
  with tempfile.TemporaryFile(mode="w+b") as tmp:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", RuntimeWarning)  # JAX warns about fork(); the child runs only TFLM
      pid = os.fork()
    if pid == 0:  # the child: load, report by exit status, never return into the caller
      code = 1
      try:
        faulthandler.disable()  # a crash here is an answer, not a report
        os.dup2(tmp.fileno(), 2)
        runtime.Interpreter.from_bytes(bytes(tflite_bytes), arena_size=int(arena_size))
        code = 0
      finally:
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    tmp.seek(0)
    log = tmp.read().decode(errors="replace")
  if os.WIFSIGNALED(status):
    log += f"\nFailed to allocate: TFLM crashed (signal {os.WTERMSIG(status)}) in a {arena_size}-byte arena"
  return os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, log


def loads(tflite_bytes: bytes, arena_size: int) -> bool:
  """Whether TFLM allocates the model in an arena of `arena_size` bytes (see `probe`)."""
  return probe(tflite_bytes, arena_size)[0]


def smallest_arena_bytes(tflite_bytes: bytes, guess: int, limit: int) -> int:
  """The smallest arena (a multiple of `ARENA_STEP`) TFLM allocates the model in.

  Starts from `guess` (the recording allocator's total, which leaves out the kernels' temporary
  buffers), doubles until the model loads (at most `limit`, which must load), then bisects.
  """
  step = ARENA_STEP
  hi = -(-int(guess) // step)
  while not loads(tflite_bytes, hi * step):
    if hi * step >= limit:
      raise ExportError(f"TFLM allocated the model in {limit} bytes once and then no longer")
    hi = min(2 * hi, -(-int(limit) // step))
  lo = hi // 2 if hi > 1 and not loads(tflite_bytes, (hi // 2) * step) else 0
  while hi - lo > 1:  # lo fails (or is 0), hi loads
    mid = (lo + hi) // 2
    if loads(tflite_bytes, mid * step):
      hi = mid
    else:
      lo = mid
  return hi * step


def _refuse(name: str, log: str, tflite_bytes: bytes, ram_bytes: int, ram_key: str) -> ExportError:
  op = _missing_op(log)
  if op is not None:
    return ExportError(
      f"{name}: TensorFlow Lite Micro has no kernel for op {op} (the model uses "
      f"{', '.join(model_ops(tflite_bytes))}); change the model so that its int8 graph avoids {op}"
    )
  need, huge = None, max(64 * ram_bytes, 64 << 20)  # what a huge arena cures is the arena not fitting
  with contextlib.suppress(_LoadFailed):
    need = smallest_arena_bytes(tflite_bytes, recorded_arena_bytes(_load(tflite_bytes, huge)), huge)
  if need is not None or _is_allocation_failure(log):
    needs = f"a {need}-byte tensor arena" if need else "a tensor arena larger than 64 times that"
    return ExportError(
      f"{name}: TensorFlow Lite Micro needs {needs}, which does not fit the target's "
      f"{ram_bytes} bytes of RAM ({ram_key}); shrink the model or raise {ram_key}"
    )
  tail = " | ".join(line for line in log.strip().splitlines()[-4:] if line)
  return ExportError(f"{name}: TensorFlow Lite Micro cannot load the model: {tail}")


def run_micro(interp, num_outputs: int, *inputs: np.ndarray) -> list[np.ndarray]:
  """Runs a loaded TFLM interpreter over float inputs of any batch size (exported batch at a time).

  Inputs are quantised with the model's own input parameters; the `num_outputs` outputs come back
  dequantised (float32), like `common.export.run_tflite`.
  """
  from common.export import dequantize_output, quantize_input, run_in_batches

  ins = [_info(interp.get_input_details(i)) for i in range(len(inputs))]
  outs = [_info(interp.get_output_details(k)) for k in range(num_outputs)]

  def run(*part: np.ndarray) -> list[np.ndarray]:
    for i, (x, info) in enumerate(zip(part, ins, strict=True)):
      interp.set_input(quantize_input(x, info), i)
    interp.invoke()
    return [dequantize_output(interp.get_output(k), o) for k, o in enumerate(outs)]

  return run_in_batches(run, ins[0].shape[0], inputs)


def _flatbuffer(tflite_bytes: bytes):
  from tflite_micro.python.tflite_micro import runtime

  return runtime.convert_bytearray_to_object(bytearray(tflite_bytes))


def _scale(tensor) -> float:
  q = tensor.quantization
  return float(q.scale[0]) if q is not None and q.scale is not None and len(q.scale) else 0.0


def output_steps(tflite_bytes: bytes) -> list[float]:
  """Each output's quantisation step: its own scale, for a float output the scale of the int8
  tensor its DEQUANTIZE reads, 1 for an unquantised integer output (0.0 when none applies)."""
  from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema

  model = _flatbuffer(tflite_bytes)
  sub = model.subgraphs[0]
  producer = {int(o): op for op in sub.operators or [] for o in op.outputs}
  steps = []
  for i in sub.outputs:
    scale = _scale(sub.tensors[i])
    op = producer.get(int(i))
    if scale == 0.0 and op is not None and _op_name(model, op) == "DEQUANTIZE":
      scale = _scale(sub.tensors[op.inputs[0]])
    elif scale == 0.0 and sub.tensors[i].type != schema.TensorType.FLOAT32:
      scale = 1.0  # an integer output without quantisation (an index): one step is one unit
    steps.append(scale)
  return steps


def divergent_ops(tflite_bytes: bytes, inputs: list[np.ndarray], *, images: int = 8) -> list[str]:
  """The ops where TFLM's reference kernels and LiteRT's builtin kernels first part ways.

  Both interpreters keep every tensor; an op is listed when its output differs while every input
  it reads agrees, so the difference starts there (a rounding choice of that kernel). LiteRT runs
  without XNNPACK here; when TFLM agrees with LiteRT's builtin kernels on every output of these
  inputs, the difference the caller saw came from LiteRT's default XNNPACK delegate ("XNNPACK").
  """
  from ai_edge_litert.interpreter import Interpreter, OpResolverType
  from tflite_micro.python.tflite_micro import runtime

  from common.export import quantize_input

  model = _flatbuffer(tflite_bytes)
  sub = model.subgraphs[0]
  constant = {t for t, ten in enumerate(sub.tensors) if model.buffers[ten.buffer].data is not None}
  lite = Interpreter(
    model_content=tflite_bytes,
    experimental_preserve_all_tensors=True,
    experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
  )
  lite.allocate_tensors()
  with _captured_stderr():
    mic = runtime.Interpreter.from_bytes(
      bytes(tflite_bytes),
      arena_size=64 << 20,
      intrepreter_config=runtime.InterpreterConfig.kPreserveAllTensors,
    )
  ins = [_info(mic.get_input_details(i)) for i in range(len(inputs))]
  origins: list[str] = []
  any_differs = False
  for n in range(min(images, inputs[0].shape[0])):
    for i, (x, info) in enumerate(zip(inputs, ins, strict=True)):
      q = quantize_input(np.asarray(x[n : n + 1]), info)
      lite.set_tensor(lite.get_input_details()[i]["index"], q)
      mic.set_input(q, i)
    lite.invoke()
    mic.invoke()
    differs: dict[int, bool] = {}

    def differ(t: int) -> bool:
      if t not in differs:
        a = lite.get_tensor(t)
        b = np.asarray(mic.GetTensor(t, 0)["tensor_data"]).reshape(a.shape)
        same = np.allclose(a, b, rtol=1e-5, atol=1e-7) if a.dtype.kind == "f" else np.array_equal(a, b)
        differs[t] = not same  # a float DEQUANTIZE may round its last bit differently
      return differs[t]

    any_differs |= any(differ(int(t)) for t in sub.outputs)
    for op in sub.operators or []:
      reads = [int(t) for t in op.inputs if t >= 0 and int(t) not in constant]
      if any(differ(int(o)) for o in op.outputs) and not any(differ(t) for t in reads):
        name = _op_name(model, op)
        if name not in origins:
          origins.append(name)
  if not any_differs and inputs[0].shape[0]:  # TFLM = LiteRT's builtin kernels: the delegate differs
    origins.append("XNNPACK")
  return origins


def _op_name(model, op) -> str:
  from tflite_micro.python.tflite_micro import runtime
  from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema

  code = model.operatorCodes[op.opcodeIndex]
  if code.customCode:
    return code.customCode.decode()
  builtin = runtime.get_builtin_code_from_operator_code(code)
  names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
  return names.get(builtin, f"builtin#{builtin}")


def _info(d: dict):
  from common.export import TensorInfo

  q = d.get("quantization_parameters", {})
  scales, zps = q.get("scales", []), q.get("zero_points", [])
  return TensorInfo(
    d.get("name", ""),
    tuple(int(s) for s in d["shape"]),
    np.dtype(d["dtype"]),
    float(scales[0]) if len(scales) else 0.0,
    int(zps[0]) if len(zps) else 0,
  )


def _compare(micro: list, lite: list, tflite_bytes: bytes, n: int):
  """(largest difference, largest in output quantisation steps (None where a float output
  differs), differing values, values, inputs where some output differs) of TFLM's outputs
  against LiteRT's, over `n` inputs."""
  max_abs, max_lsb_seen, mismatched, total = 0.0, 0, 0, 0
  differing = np.zeros(n, bool)
  for a, b, step in zip(micro, lite, output_steps(tflite_bytes), strict=True):
    diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
    max_abs = max(max_abs, float(diff.max(initial=0.0)))
    total += diff.size
    if step > 0:  # in quantisation steps; a float output's last-bit rounding rounds to 0 steps
      steps = np.rint(diff / step).astype(np.int64)
      if max_lsb_seen is not None:
        max_lsb_seen = max(max_lsb_seen, int(steps.max(initial=0)))
    else:
      steps = diff
      max_lsb_seen = None if diff.max(initial=0.0) > 0 else max_lsb_seen
    mismatched += int(np.count_nonzero(steps))
    differing |= steps.reshape(len(differing), -1).any(-1)
  return max_abs, max_lsb_seen, mismatched, total, differing


def _run_in_smallest_arena(tflite_bytes: bytes, xs: list, ram_bytes: int, name: str, ram_key: str):
  """(arena, recorded arena, outputs): the model loaded in TFLM within `ram_bytes`, its arena
  shrunk to the smallest that allocates, and run on `xs` (ExportError naming what failed)."""
  from common.export import tflite_io

  try:
    first = _load(tflite_bytes, ram_bytes)
  except _LoadFailed as e:
    raise _refuse(name, e.log, tflite_bytes, ram_bytes, ram_key) from None
  recorded = recorded_arena_bytes(first)
  del first
  arena = smallest_arena_bytes(tflite_bytes, recorded, ram_bytes)
  interp = _load(tflite_bytes, arena)
  with _captured_stderr() as log:
    try:
      return arena, recorded, run_micro(interp, len(tflite_io(tflite_bytes)[1]), *xs)
    except RuntimeError as e:
      err = e
  raise ExportError(f"{name}: TensorFlow Lite Micro failed to run the model: {err}; {log[0].strip()[-300:]}")


def check_int8(
  tflite_bytes: bytes,
  parity_inputs: np.ndarray | list[np.ndarray],
  *,
  ram_bytes: int = DEFAULT_TARGET_RAM_BYTES,
  name: str = "model",
  ram_key: str = "target_ram_bytes",
  max_lsb: int | None = None,
) -> MicroCheck:
  """Loads an int8 flatbuffer in TFLM, measures its arena and compares it with LiteRT.

  Args:
    tflite_bytes: the int8 flatbuffer (int8 or float32 I/O).
    parity_inputs: the float inputs (one array, or one per model input) both runtimes see.
    ram_bytes: the target device's RAM; TFLM gets it as the arena, so a model that does not
      allocate in it does not fit.
    name: the export's name, for messages.
    ram_key: the config key holding `ram_bytes`, for messages.
    max_lsb: the largest TFLM-vs-LiteRT difference accepted, in output quantisation steps
      (TFLM's reference kernels and LiteRT's optimised ones may round an intermediate differently).

  Raises:
    ExportError: TFLM lacks a kernel for an op (named), the arena does not fit `ram_bytes`, TFLM
      fails to run it, or its outputs differ from LiteRT's by more than `max_lsb` steps.
  """
  from common.export import run_tflite

  xs = [
    np.asarray(a) for a in (parity_inputs if isinstance(parity_inputs, list | tuple) else [parity_inputs])
  ]
  arena, recorded, micro = _run_in_smallest_arena(tflite_bytes, xs, ram_bytes, name, ram_key)
  max_abs, max_lsb_seen, mismatched, total, differing = _compare(
    micro, run_tflite(tflite_bytes, *xs), tflite_bytes, xs[0].shape[0]
  )
  if max_lsb is not None and (max_lsb_seen is None or max_lsb_seen > max_lsb):
    raise ExportError(
      f"{name}: TensorFlow Lite Micro's outputs differ from LiteRT's by {max_lsb_seen} quantisation "
      f"steps (at most {max_lsb} accepted) on {xs[0].shape[0]} parity inputs"
    )
  return MicroCheck(
    ops=tuple(model_ops(tflite_bytes)),
    arena_bytes=arena,
    recorded_arena_bytes=recorded,
    ram_bytes=int(ram_bytes),
    flash_bytes=len(tflite_bytes),
    images=int(xs[0].shape[0]),
    max_abs_diff=max_abs,
    max_lsb_diff=max_lsb_seen,
    mismatch_fraction=mismatched / max(total, 1),
    divergent_ops=tuple(divergent_ops(tflite_bytes, [x[differing] for x in xs])) if mismatched else (),
  )


def target_ram_bytes(config, key: str) -> int:
  """The target device's RAM from `config.<key>` (validated; `DEFAULT_TARGET_RAM_BYTES` when absent)."""
  from common import config as cfg

  node = config
  for part in key.split("."):
    if part not in node:
      return DEFAULT_TARGET_RAM_BYTES
    node = node[part]
  cfg.check_range(config, key, 1024, None, integer=True)
  return int(node)


MICRO_COLUMNS = ["flash B", "TFLM arena B", "target RAM B", "arena fits RAM", "TFLM vs LiteRT int8"]


def micro_cells(d: dict, prefix: str = "micro_") -> list:
  """The `MICRO_COLUMNS` cells of a `MicroCheck.as_dict(prefix)` (or '-' when it has none)."""
  if f"{prefix}refused" in d:
    return ["-", "-", d.get(f"{prefix}ram_bytes", "-"), "no", f"refused: {d[f'{prefix}refused']}"]
  if f"{prefix}arena_bytes" not in d:
    return ["-"] * len(MICRO_COLUMNS)
  return [
    d[f"{prefix}flash_bytes"],
    d[f"{prefix}arena_bytes"],
    d[f"{prefix}ram_bytes"],
    "yes" if d[f"{prefix}fits"] else "no",
    agreement_text(d, prefix),
  ]


def agreement_text(d: dict, prefix: str = "micro_") -> str:
  """'bit-exact', or by how much and where the difference starts, for a report cell."""
  if d[f"{prefix}bit_exact"]:
    return f"bit-exact ({d[f'{prefix}images']} inputs)"
  lsb = d[f"{prefix}max_lsb_diff"]
  by = f"<= {lsb} steps" if lsb is not None else f"<= {d[f'{prefix}max_abs_diff']:.3g}"
  where = ", ".join(d[f"{prefix}divergent_ops"]) or "?"
  return f"{by} on {100 * d[f'{prefix}mismatch_fraction']:.2g}% of outputs (from {where})"


def main(argv: list[str] | None = None) -> int:
  """`python -m common.micro FILE.tflite ... [--ram BYTES]`: ops, arena, flash and fit of int8 exports."""
  import argparse

  parser = argparse.ArgumentParser(prog="python -m common.micro", description=main.__doc__)
  parser.add_argument("files", nargs="+")
  parser.add_argument("--ram", type=int, default=DEFAULT_TARGET_RAM_BYTES, help="target RAM in bytes")
  args = parser.parse_args(argv)
  print(
    "| file | flash B | TFLM arena B | recorded B | target RAM B | fits | ops |\n|---|---|---|---|---|---|---|"
  )
  for path in args.files:
    with open(path, "rb") as f:
      fb = f.read()
    try:
      first = _load(fb, args.ram)
    except _LoadFailed as e:
      raise _refuse(path, e.log, fb, args.ram, "--ram") from None
    recorded = recorded_arena_bytes(first)
    arena = smallest_arena_bytes(fb, recorded, args.ram)
    fits = "yes" if arena <= args.ram else "no"
    print(f"| {path} | {len(fb)} | {arena} | {recorded} | {args.ram} | {fits} | {', '.join(model_ops(fb))} |")
  return 0


if __name__ == "__main__":
  from common.cli import run_main

  run_main(main)
