"""Per-op time and FLOP/s of a compiled XLA:CPU executable, from a `jax.profiler` trace.

`op_breakdown(compiled, run)` traces `run()` (which must call the compiled
function and block), sums the time of every thunk of the entry computation over
all threads, and joins it with each op's kind and FLOPs read from the optimized
HLO text (`compiled.as_text()`): convolutions (2 x output elements x the
kernel's elements per output feature) and dots (2 x output elements x the
contracted size), also when they sit inside a fusion (YNN or XLA's own).
`group_rows` sums the ops by kind (1x1 conv, 3x3 conv, grouped conv, dot,
elementwise fusion, copy/transpose, ...) and direction (forward, backward,
grad-of-grad, from the JAX op_name metadata), which is the table
docs/agile.md shows.
"""

from __future__ import annotations

import glob
import itertools
import math
import re
import tempfile
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

_SHAPE = re.compile(r"[a-z]+\d*\[([\d,]*)\]")


@dataclass
class Instr:
  name: str
  shape: str
  opcode: str
  rest: str

  def attr(self, key: str) -> str | None:
    m = re.search(rf"\b{key}=([^\s,]+(?:\{{[^}}]*\}})?)", self.rest)
    return m.group(1) if m else None


def _dims(shape: str) -> list[int]:
  m = _SHAPE.search(shape)
  return [int(d) for d in m.group(1).split(",") if d] if m else []


def _parse_instr(line: str) -> Instr | None:
  line = line.strip()
  if line.startswith("ROOT "):
    line = line[5:]
  if not line.startswith("%") or " = " not in line:
    return None
  name, rhs = line[1:].split(" = ", 1)
  if rhs.startswith("("):  # tuple shape
    depths = list(itertools.accumulate(int(ch == "(") - int(ch == ")") for ch in rhs))
    end = depths.index(0) + 1
    shape, rhs = rhs[:end], rhs[end:].lstrip()
  else:
    shape, rhs = rhs.split(" ", 1)
  m = re.match(r"([\w-]+)\((.*)$", rhs)
  if not m:
    return None
  return Instr(name, shape, m.group(1), m.group(2))


def parse_hlo(text: str) -> tuple[dict[str, list[Instr]], str]:
  """{computation name: instructions} and the entry computation's name."""
  comps: dict[str, list[Instr]] = {}
  entry, cur = "", None
  for line in text.splitlines():
    head = re.match(r"^(ENTRY )?%(\S+) \(.*\{\s*$", line)
    if head:
      cur = head.group(2)
      comps[cur] = []
      if head.group(1):
        entry = cur
    elif line.startswith("}"):
      cur = None
    elif cur is not None:
      ins = _parse_instr(line)
      if ins is not None:
        comps[cur].append(ins)
  return comps, entry


def _operand_shapes(ins: Instr, shapes: dict[str, str]) -> list[list[int]]:
  """Dimensions of the operands, from inline shapes or else from the computation's instructions."""
  args = ins.rest.split("),")[0]
  inline = [[int(d) for d in m.group(1).split(",") if d] for m in _SHAPE.finditer(args)]
  if inline:
    return inline
  return [_dims(shapes.get(n, "")) for n in re.findall(r"%([\w.\-]+)", args)]


def instr_flops(ins: Instr, shapes: dict[str, str] | None = None) -> float:
  """FLOPs of a convolution or dot (multiply-adds x 2); 0 for anything else.

  `shapes` maps the names of the computation's instructions to their shapes
  (operand shapes are not printed inline inside fused computations).
  """
  shapes = shapes or {}
  if ins.opcode == "convolution":
    ops = _operand_shapes(ins, shapes)
    labels = ins.attr("dim_labels") or ""
    rhs_labels = labels.split("_")[1].split("->")[0] if "_" in labels else ""
    if len(ops) < 2 or "o" not in rhs_labels or len(ops[1]) != len(rhs_labels):
      return 0.0
    rhs = ops[1]
    return 2.0 * math.prod(_dims(ins.shape)) * math.prod(rhs) / rhs[rhs_labels.index("o")]
  if ins.opcode == "dot":
    ops = _operand_shapes(ins, shapes)
    cdims = ins.attr("lhs_contracting_dims") or "{}"
    contracted = [int(d) for d in cdims.strip("{}").split(",") if d]
    if not ops or any(d >= len(ops[0]) for d in contracted):
      return 0.0
    return 2.0 * math.prod(_dims(ins.shape)) * math.prod(ops[0][d] for d in contracted)
  return 0.0


def _op_name(ins: Instr) -> str:
  m = re.search(r'op_name="([^"]*)"', ins.rest)
  return m.group(1) if m else ""


def _kind(ins: Instr, comps: dict[str, list[Instr]], shapes: dict[str, str]) -> tuple[str, float, str]:
  """(kind, FLOPs, JAX op_name) of one instruction, looking inside fusions."""
  if ins.opcode == "convolution":
    window = re.search(r"size=([\dx]+)", ins.rest)
    grouped = (ins.attr("feature_group_count") or "1") != "1" or (ins.attr("batch_group_count") or "1") != "1"
    kind = f"conv {window.group(1) if window else '?'}{' grouped' if grouped else ''}"
    return kind, instr_flops(ins, shapes), _op_name(ins)
  if ins.opcode == "dot":
    return "dot", instr_flops(ins, shapes), _op_name(ins)
  if ins.opcode == "fusion":
    inner = comps.get((ins.attr("calls") or "").lstrip("%"), [])
    inner_shapes = {i.name: i.shape for i in inner}
    ynn = "ynn " if "__ynn_fusion" in ins.rest else ""
    heavy = [_kind(i, comps, inner_shapes) for i in inner if i.opcode in ("convolution", "dot")]
    if heavy:
      return f"{ynn}fused {heavy[0][0]}", sum(f for _, f, _ in heavy), heavy[0][2]
    names = [n for n in (_op_name(i) for i in reversed(inner)) if n]
    op_name = _op_name(ins) or (names[0] if names else "")
    ops = {i.opcode for i in inner}
    if ops <= {"parameter", "transpose", "copy", "bitcast", "broadcast", "constant", "reshape", "slice"}:
      return "copy/transpose fusion", 0.0, op_name
    if "reduce" in ops or "reduce-window" in ops:
      return f"{ynn}reduce fusion", 0.0, op_name
    return f"{ynn}elementwise fusion", 0.0, op_name
  return ins.opcode, 0.0, _op_name(ins)


_PASSES = {
  "jvp": "forward",
  "transpose/jvp": "backward",
  "jvp/jvp": "IG forward",
  "jvp/transpose/jvp": "IG gradient",
  "transpose/jvp/jvp": "outer backward of IG forward",
  "transpose/jvp/transpose/jvp": "outer backward of IG gradient",
}


def direction(op_name: str) -> str:
  """Module and pass of an op from its JAX op_name, e.g. jit(f)/transpose(jvp(transpose(jvp(Body))))/...:
  "Body: outer backward of IG gradient" (the grad-of-grad). Passes are named for AgileNN's step."""
  parts = op_name.split("/")
  head = parts[1] if len(parts) > 1 else ""
  chain = re.findall(r"(transpose|jvp)\(", head)
  module = re.sub(r"^(?:(?:transpose|jvp)\()+", "", head).rstrip(")")
  module = "-" if not module or module.startswith("jit(") else module
  return f"{module}: {_PASSES.get('/'.join(chain), '/'.join(chain) or 'other')}"


def trace_thunk_times(run: Callable[[], object], repeats: int = 1) -> dict[str, float]:
  """Seconds per thunk name (summed over threads, averaged over `repeats` calls of `run`)."""
  import jax
  from jax._src.lib import _profile_data

  with tempfile.TemporaryDirectory() as d:
    jax.profiler.start_trace(d)
    try:
      for _ in range(repeats):
        run()
    finally:
      jax.profiler.stop_trace()
    paths = glob.glob(f"{d}/**/*.xplane.pb", recursive=True)
    data = _profile_data.ProfileData.from_file(paths[-1])
    times: dict[str, float] = defaultdict(float)
    for plane in data.planes:
      for line in plane.lines:
        if not line.name.startswith("tf_XLA"):
          continue
        for ev in line.events:
          times[ev.name] += ev.duration_ns * 1e-9 / repeats
  return dict(times)


def op_breakdown(compiled, run: Callable[[], object], repeats: int = 1) -> list[dict]:
  """One row per entry op that ran: name, kind, direction, seconds, FLOPs, FLOP/s."""
  comps, entry = parse_hlo(compiled.as_text())
  times = trace_thunk_times(run, repeats)
  instrs = comps.get(entry, [])
  shapes = {i.name: i.shape for i in instrs}
  rows = []
  for ins in instrs:
    if ins.name not in times:
      continue
    kind, flops, op_name = _kind(ins, comps, shapes)
    t = times[ins.name]
    rows.append({
      "name": ins.name,
      "kind": kind,
      "direction": direction(op_name),
      "seconds": t,
      "flops": flops,
      "flops_per_s": flops / t if t > 0 else 0.0,
    })  # fmt: skip
  return rows


def group_rows(rows: list[dict], keys: tuple[str, ...] = ("kind", "direction")) -> list[dict]:
  """Rows summed by `keys`, most time first, with each group's share of the summed op time."""
  groups: dict[tuple, dict] = {}
  for r in rows:
    k = tuple(r[key] for key in keys)
    g = groups.setdefault(k, {**{key: r[key] for key in keys}, "ops": 0, "seconds": 0.0, "flops": 0.0})
    g["ops"] += 1
    g["seconds"] += r["seconds"]
    g["flops"] += r["flops"]
  total = sum(g["seconds"] for g in groups.values()) or 1.0
  out = sorted(groups.values(), key=lambda g: -g["seconds"])
  for g in out:
    g["share"] = g["seconds"] / total
    g["flops_per_s"] = g["flops"] / g["seconds"] if g["seconds"] > 0 else 0.0
  return out


def compiled_bytes(compiled) -> int | None:
  """Arguments + temporaries + outputs (less aliased buffers) of a compiled program, by XLA's own
  accounting (`memory_analysis`); None where the backend gives none."""
  try:
    m = compiled.memory_analysis()
  except (AttributeError, NotImplementedError, RuntimeError):
    return None
  if m is None:
    return None
  return int(m.argument_size_in_bytes + m.temp_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes)
