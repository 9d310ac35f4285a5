"""Cost model: per-op sums, max over branches, transfers, and least-squares recovery of known coefficients."""

import numpy as np
import pytest

from branching import costmodel, flops, forkjoin
from branching import network as bcfg


def _table(scale=1.0):
  base = np.array([5e-9, 2e-8, 3e-9, 1e-7, 2e-2, 0.3, 1e-7, 1e-5])
  return costmodel.CostTable(
    {"cpu": tuple(base * scale), "dsp": tuple(base * 0.7 * scale), "gpu": tuple(base * 1.3)}
  )


def test_single_device_is_sum_over_ops():
  t = _table()
  c = bcfg.published("R-50-C")
  want = sum(np.asarray(t.coef["cpu"]) @ costmodel.op_features(o) for o in flops.ops(c))
  assert costmodel.predict(c, t) == pytest.approx(want, rel=1e-12)
  f = costmodel.op_features(next(o for o in flops.ops(bcfg.published("RX-4-C")) if o.kind == "gconv"))
  assert f[2] > 0 and f[0] == 0 and f[4] > 3  # grouped conv: split into groups + split + concat ops


def test_stage_is_slowest_branch_plus_transfers_and_concat():
  t = _table()
  c = bcfg.published("R-50-CD")
  total, rows = costmodel.predict(c, t, breakdown=True)
  ops = flops.ops(c)
  cpu, dsp = np.asarray(t.coef["cpu"]), np.asarray(t.coef["dsp"])
  st = [o for o in ops if o.stage == 1]
  lat_cpu = sum(cpu @ costmodel.op_features(o) for o in st if o.branch == 0)
  in_el = st[0].act_in
  dsp_ops = [o for o in st if o.branch == 1]
  lat_dsp = sum(dsp @ costmodel.op_features(o) for o in dsp_ops)
  lat_dsp += dsp @ (costmodel.xfer_features(in_el + dsp_ops[-1].act_out) + costmodel.xfer_features(0))
  seg = [r for r in rows if len(r) == 2][1]
  assert seg == pytest.approx([lat_cpu, lat_dsp])
  assert total == pytest.approx(
    sum(max(r) for r in rows) + sum(cpu @ costmodel.op_features(o) for o in ops if "concat" in o.name),
    rel=1e-9,
  )


def test_transfer_cost_only_off_the_merge_device():
  t = _table()
  c = bcfg.published("R-50-CD")
  same = c.replace(
    devices=("cpu", "cpu"),
    stages=tuple(
      st.__class__(
        tuple(b.__class__(**{**b.__dict__, "device": "cpu"}) for b in st.branches),
        st.original_width,
        st.kernel,
      )
      for st in c.stages
    ),
  )
  t2 = costmodel.CostTable({"cpu": t.coef["cpu"], "dsp": t.coef["cpu"]})
  # (with the fork/join term of two branches on one processor set to zero)
  assert costmodel.predict(c, t2) > costmodel.predict(same, forkjoin.with_fork_join(t2, "cpu", 0.0, 0.0))


def test_fork_join_paid_once_per_stage_when_branches_share_the_merge_processor():
  c = bcfg.published("R-50-CD")
  dm = {"cpu": "host", "dsp": "host"}
  base = costmodel.CostTable({"host": _table().coef["cpu"]})
  t0, t1 = (forkjoin.with_fork_join(base, "host", s, e) for s, e in ((0.0, 0.0), (0.5, 1e-6)))
  ops = flops.ops(c)
  want = 0.0
  for i in range(len(c.stages)):
    st = [o for o in ops if o.stage == i]
    concat = [o for o in st if o.branch == -1][-1]
    want += 0.5 + 1e-6 * (st[0].act_in + concat.act_out)
  got = costmodel.predict(c, t1, device_map=dm) - costmodel.predict(c, t0, device_map=dm)
  assert got == pytest.approx(want, rel=1e-9)
  # one branch per processor (the phone): the merge processor's fork/join coefficients are never used
  t = _table()
  a, b = (costmodel.predict(c, forkjoin.with_fork_join(t, "cpu", s, e)) for s, e in ((0.0, 0.0), (9.0, 1e-3)))
  assert a == b


def test_fit_fork_join_recovers_overhead_line():
  rows = [{"branches": 2, "in_elems": n, "out_elems": 2 * n, "fork_join_ms": 0.2 + 1e-6 * 3 * n}
          for n in (1000, 50000, 200000)]  # fmt: skip
  rows.append({"branches": 1, "in_elems": 10, "out_elems": 10, "sequential_ms": 5.0})
  s, e = forkjoin.fit_fork_join(rows)
  assert s == pytest.approx(0.2, rel=1e-6) and e == pytest.approx(1e-6, rel=1e-6)


def test_calibration_recovers_known_latencies():
  truth = _table()
  data = [(c, costmodel.predict(c, truth)) for _, c, _ in costmodel.published_dataset()[::2]]
  fit = costmodel.calibrate(data, ("cpu", "gpu", "dsp"), ridge=1e-6)
  errs = [abs(costmodel.predict(c, fit) / ms - 1) for c, ms in data]
  assert np.median(errs) < 0.02


def test_unknown_processor_raises():
  from common.errors import ConfigError

  with pytest.raises(ConfigError, match="npu"):
    _table().vector("npu")
