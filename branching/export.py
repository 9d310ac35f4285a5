"""Tagged TFLite export, per-branch subgraphs, and branch-parallel execution on CPU threads.

`export_model` converts the whole (stretched) network through `common.export`:
jax2tf keeps the Flax module path in every op name, so each TFLite tensor name
carries the artifact's tags (`st_cpu_conv`, `s2_dsp_b1_a_conv`,
`s2_cpu_mp_start_mp_end_concat`, ...): the modified TFLite runtime of the
artifact assigns ops to processors and partitions at fork/join by exactly these
names. Stock LiteRT ignores them and runs the graph sequentially, so
`export_segments` also cuts the network at every fork and join into separate
flatbuffers (sequential parts, and one per branch of every branched stage), and
`ParallelRunner` runs the branches of a stage concurrently, one LiteRT
interpreter per branch on its own thread (LiteRT releases the GIL in invoke),
concatenating on the host: a CPU-thread port of the artifact's fork/join.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np

from branching.models import AnyNet
from common import data as data_lib
from common import export

TAG_RE = re.compile(r"(st|s\d+|head)_(cpu|gpu|dsp)")


def export_model(model: AnyNet, variables, image_size: int, *, mean, std) -> bytes:
  """Float TFLite of the whole network on raw [0, 1] images (normalisation inside)."""

  def predict(x):
    return model.apply(variables, data_lib.normalize(x, mean, std), train=False)[0]

  return export.to_tflite(predict, np.zeros((1, image_size, image_size, 3), np.float32), name="anynet")


def tags(tflite_bytes: bytes) -> dict[str, list[str]]:
  """Tensor names of the flatbuffer grouped by tag: per device, mp_start, mp_end."""
  names = export.tflite_tensor_names(tflite_bytes)
  first = [n.split(";")[0] for n in names]  # what the artifact's GetNodeName keeps
  out: dict[str, list[str]] = {"cpu": [], "gpu": [], "dsp": [], "mp_start": [], "mp_end": []}
  for n in first:
    m = TAG_RE.search(n)
    if m:
      out[m.group(2)].append(n)
    for key in ("mp_start", "mp_end"):
      if key in n:
        out[key].append(n)
  return out


@dataclasses.dataclass
class Segment:
  """A sequential flatbuffer (`branches` has one entry) or a fork/join stage (one per branch)."""

  name: str
  branches: list[bytes]


def export_segments(model: AnyNet, variables, image_size: int, *, mean, std) -> list[Segment]:
  """Cuts the network at every fork and join: sequential runs and per-branch flatbuffers."""
  c = model.config
  x = jnp.zeros((1, image_size, image_size, 3), jnp.float32)

  def fn_of(part, first=False):
    def f(t):
      if first:
        t = data_lib.normalize(t, mean, std)
      return model.apply(variables, t, train=False, part=part)

    return f

  segs: list[Segment] = []
  pending: list = []  # sequential parts not yet exported: (part, first)
  seq_in = x

  def flush():
    if not pending:
      return
    parts = list(pending)

    def seq(t):
      for part, first in parts:
        t = fn_of(part, first)(t)
      return t

    tfl = export.to_tflite(seq, np.zeros(seq_in.shape, np.float32), name="seq")
    segs.append(Segment("+".join(_pname(p) for p, _ in parts), [tfl]))
    pending.clear()

  pending.append((("stem",), True))
  h = jax.eval_shape(fn_of(("stem",), True), x)
  for i, st in enumerate(c.stages):
    if not st.branched:
      if not pending:
        seq_in = h
      pending.append((("branch", i, 0), False))
      h = jax.eval_shape(fn_of(("branch", i, 0)), h)
      continue
    flush()
    x_in = np.zeros(h.shape, np.float32)
    brs = [
      export.to_tflite(fn_of(("branch", i, j)), x_in, name=f"s{i + 1}_{b.device}")
      for j, b in enumerate(st.branches)
    ]
    segs.append(Segment(f"s{i + 1}", brs))
    outs = [jax.eval_shape(fn_of(("branch", i, j)), h) for j in range(len(st.branches))]
    h = jax.ShapeDtypeStruct((*outs[0].shape[:-1], sum(o.shape[-1] for o in outs)), jnp.float32)
  if not pending:
    seq_in = h
  pending.append((("head",), False))
  flush()
  return segs


def save_segments(segments: list[Segment], directory) -> list[dict]:
  """Writes `<name>_branch<j>.tflite` per branch of each segment; returns the manifest (names, files)."""
  from pathlib import Path

  directory = Path(directory)
  manifest = []
  for seg in segments:
    files = [f"{seg.name}_branch{j}.tflite" for j in range(len(seg.branches))]
    for f, b in zip(files, seg.branches, strict=True):
      export.write_atomic(directory / f, b)
    manifest.append({"name": seg.name, "files": files})
  return manifest


def load_segments(directory, manifest: list[dict]) -> list[Segment]:
  """The segments `save_segments` wrote into `directory`."""
  from pathlib import Path

  return [Segment(m["name"], [(Path(directory) / f).read_bytes() for f in m["files"]]) for m in manifest]


def _pname(part) -> str:
  return "stem" if part[0] == "stem" else "head" if part[0] == "head" else f"s{part[1] + 1}"


class ParallelRunner:
  """Runs exported segments; the branches of each stage concurrently on `threads` threads."""

  def __init__(self, segments: list[Segment], *, threads: int = 2, parallel: bool = True):
    from ai_edge_litert.interpreter import Interpreter

    self.parallel = parallel and threads > 1
    self.pool = cf.ThreadPoolExecutor(max_workers=threads) if self.parallel else None
    self.stages = []
    for seg in segments:
      runs = []
      for tfl in seg.branches:
        it = Interpreter(model_content=tfl, num_threads=1)
        it.allocate_tensors()
        runs.append((it, it.get_input_details()[0]["index"], it.get_output_details()[0]["index"]))
      self.stages.append(runs)

  @staticmethod
  def _invoke(run, x):
    it, i, o = run
    it.set_tensor(i, x)
    it.invoke()
    return it.get_tensor(o)

  def __call__(self, x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, np.float32)
    for runs in self.stages:
      if len(runs) == 1:
        x = self._invoke(runs[0], x)
      elif self.parallel:
        futs = [self.pool.submit(self._invoke, r, x) for r in runs]
        x = np.concatenate([f.result() for f in futs], axis=-1)
      else:
        x = np.concatenate([self._invoke(r, x) for r in runs], axis=-1)
    return x

  def close(self) -> None:
    if self.pool is not None:
      self.pool.shutdown()


def time_fn(fn, x, *, repeats: int = 50, warmup: int = 5) -> float:
  """Median wall milliseconds of fn(x) (the artifact reports the min; we report the median)."""
  from common import timing

  return timing.median_ms(lambda: fn(x), repeats=repeats, warmup=warmup)


def tflite_runner(tfl: bytes, threads: int):
  """x -> first output, for a whole-model flatbuffer on `threads` LiteRT threads."""
  run = export.make_tflite_runner(tfl, num_threads=threads)
  return lambda x: run(x)[0]
