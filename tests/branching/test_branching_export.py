"""Export: device and fork/join tags in the flatbuffer, parity with JAX, per-branch parallel execution."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from branching import export as bexport
from branching import models
from branching import network as bcfg
from common import export as cexport

SIZE = 32


@pytest.fixture(scope="module")
def exported():
  net = bcfg.load("tiny/R-tiny-CD.yaml")
  m = models.AnyNet(net)
  v = m.init(jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 3)), train=False)
  mean, std = np.full(3, 0.5, np.float32), np.full(3, 0.25, np.float32)
  tfl = bexport.export_model(m, v, SIZE, mean=mean, std=std)
  segs = bexport.export_segments(m, v, SIZE, mean=mean, std=std)
  x = np.random.default_rng(0).random((1, SIZE, SIZE, 3), np.float32)
  ref = np.asarray(m.apply(v, (x - mean) / std, train=False)[0])
  return {"tfl": tfl, "segs": segs, "x": x, "ref": ref, "net": net}


def test_tags_in_flatbuffer(exported):
  names = cexport.tflite_tensor_names(exported["tfl"])
  first = [n.split(";")[0] for n in names]  # what the artifact's runtime keeps of a fused op's name
  assert any("st_cpu" in n for n in first)
  assert any("head_cpu_dense" in n for n in first)
  for dev in ("cpu", "dsp"):
    assert any(f"s2_{dev}_b1" in n for n in first) and any(f"s3_{dev}_b2" in n for n in first)
  # fork after the unbranched stage 1, join-and-fork after stage 2, join after stage 3
  assert any("s1_cpu_b1_mp_start_add" in n for n in first)
  assert any("s2_cpu_mp_start_mp_end_concat" in n for n in first)
  assert any("s3_cpu_mp_end_concat" in n for n in first)
  t = bexport.tags(exported["tfl"])
  assert len(t["dsp"]) > 0 and len(t["gpu"]) == 0


def test_tflite_matches_jax(exported):
  out = cexport.run_tflite(exported["tfl"], exported["x"])[0]
  np.testing.assert_allclose(out, exported["ref"], atol=1e-4, rtol=1e-4)


def test_per_branch_segments(exported):
  segs = exported["segs"]
  assert [(s.name, len(s.branches)) for s in segs] == [("stem+s1", 1), ("s2", 2), ("s3", 2), ("head", 1)]
  for parallel in (True, False):
    run = bexport.ParallelRunner(segs, threads=2, parallel=parallel)
    np.testing.assert_allclose(run(exported["x"]), exported["ref"], atol=1e-4, rtol=1e-4)
    run.close()
  # a branch flatbuffer is exactly the branch: its output width is the branch width
  from ai_edge_litert.interpreter import Interpreter

  widths = []
  for b in segs[1].branches:
    it = Interpreter(model_content=b)
    widths.append(int(it.get_output_details()[0]["shape"][-1]))
  assert widths == [b.width for b in exported["net"].stages[1].branches]


def test_pinned_runner_matches_jax_and_times_each_stage(exported):
  import os

  from branching import forkjoin

  cores = (0, min(1, os.cpu_count() - 1))
  run = forkjoin.PinnedRunner(exported["segs"], cores)
  before = os.sched_getaffinity(0)
  np.testing.assert_allclose(run(exported["x"]), exported["ref"], atol=1e-4, rtol=1e-4)
  assert os.sched_getaffinity(0) == before  # the caller's affinity is restored
  rows = forkjoin.stage_timings(run, exported["x"], repeats=2)
  run.close()
  assert [r["branches"] for r in rows] == [1, 2, 2, 1]
  for r in rows[1:3]:
    assert len(r["branch_alone_ms"]) == len(r["branch_compute_ms"]) == 2
    assert r["fork_join_ms"] == r["in_run_ms"] - max(r["branch_compute_ms"])
  assert all(r["in_run_ms"] > 0 for r in rows)
  assert rows[1]["out_elems"] == rows[2]["in_elems"]


def test_saved_segments_load_back_and_run(exported, tmp_path):
  manifest = bexport.save_segments(exported["segs"], tmp_path / "segs")
  assert [m["name"] for m in manifest] == [s.name for s in exported["segs"]]
  again = bexport.load_segments(tmp_path / "segs", manifest)
  assert [s.branches for s in again] == [s.branches for s in exported["segs"]]
  run = bexport.ParallelRunner(again, threads=2)
  np.testing.assert_allclose(run(exported["x"]), exported["ref"], atol=1e-4, rtol=1e-4)
  run.close()


def test_parallel_prediction_uses_the_fork_join_measured_at_the_models_size(exported):
  from branching import costmodel, forkjoin, measure

  net = exported["net"]
  m = models.AnyNet(net)
  v = m.init(jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 3)), train=False)
  base = forkjoin.with_fork_join(
    costmodel.CostTable({"host": tuple(costmodel.PRIOR)}), "host", *costmodel.HOST_FORK_JOIN
  )
  table = costmodel.CostTable({**base.coef, "host2": tuple(costmodel.PRIOR)})
  mean, std = np.full(3, 0.5, np.float32), np.full(3, 0.25, np.float32)
  out = measure.parallel_speedup(
    (m, v), (m, v), SIZE, mean=mean, std=std, repeats=2, host_table=table,
    original_tflite=exported["tfl"], stretched_tflite=exported["tfl"], stretched_segments=exported["segs"],
  )  # fmt: skip
  fj = out["fork_join"]
  assert [r["segment"] for r in fj["stages"] if r["branches"] > 1] == [1, 2]
  assert (fj["per_stage_s_ms"], fj["per_element_e_ms"]) == forkjoin.fit_fork_join(fj["stages"])
  pred = lambda t: costmodel.predict(net, t, image_size=SIZE, device_map=measure.HOST_ALL)
  measured_term = forkjoin.with_fork_join(table, "host", fj["per_stage_s_ms"], fj["per_element_e_ms"])
  assert out["predicted_branch_parallel_ms"] == pred(measured_term)
  assert out["predicted_branch_parallel_ms_with_224px_fork_join"] == pred(table)
  assert out["branch_parallel_max_abs_err"] < 1e-3
