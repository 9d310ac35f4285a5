"""Search: every constraint holds, recomputed independently of the search's own bookkeeping."""

import pytest

from branching import costmodel, flops, search
from branching import network as bcfg
from common.errors import ConfigError


@pytest.fixture(scope="module")
def table():
  return costmodel.default_table()


def _compute_latency(c, table, stage, branch):
  """Compute-only latency of one branch, from the stretched config's own op walk."""
  ops = [o for o in flops.ops(c) if o.stage == stage and o.branch == branch and "_se_" not in o.name]
  return sum(table.vector(o.device) @ costmodel.op_features(o) for o in ops)


@pytest.mark.parametrize("procs", [("cpu", "dsp"), ("cpu", "gpu", "dsp")])
def test_constraints_hold(table, procs):
  orig = bcfg.published("R-50-C")
  log = []
  found = search.stretch(orig, procs, table=table, log=log)
  assert found.devices == procs and found.mb_ver == 2
  macs = flops.stage_macs(found)
  for i, (st, st0, e) in enumerate(zip(found.stages, orig.stages, log, strict=True)):
    b0 = st0.branches[0]
    if i == 0:
      assert e["F"] == flops.stage_macs(orig)[0][0]
    if not st.branched:
      continue
    for b in st.branches:
      assert round(0.66 * b0.depth) <= b.depth <= b0.depth
      assert 0.5 * b0.width <= b.width <= b0.width and b.width % 8 == 0
    main = procs.index(e["main"])
    assert macs[i][main] >= 0.4 * e["F"]
    assert sum(macs[i]) >= 0.8 * e["F"]
    for j in range(len(procs)):
      assert _compute_latency(found, table, i, j) <= 0.8 * e["L_star"] * (1 + 1e-9)
  # a stretched model is faster than the best single processor under the same model
  _, single = search.best_single(orig, procs, table)
  assert costmodel.predict(found, table) < single


def test_regnet_group_widths_stay_valid(table):
  found = search.stretch(bcfg.published("RX-1.6-C"), ("cpu", "dsp"), table=table)
  for st in found.stages:
    for b in st.branches:
      assert int(round(b.width * b.bot_mul)) % b.group_w == 0
  bcfg.from_dict(bcfg.to_dict(found), "again")  # a valid config in the published schema


def test_tight_constraints_leave_stages_unbranched(table):
  found = search.stretch(bcfg.published("R-50-C"), ("cpu", "dsp"), table=table, gamma=0.3)
  assert not any(st.branched for st in found.stages)


def test_bad_requests(table):
  with pytest.raises(ConfigError):
    search.stretch(bcfg.published("R-50-CD"), ("cpu", "dsp"), table=table)
  with pytest.raises(ConfigError):
    search.stretch(bcfg.published("R-50-C"), ("cpu", "cpu"), table=table)
  with pytest.raises(ConfigError, match="npu"):
    search.stretch(bcfg.published("R-50-C"), ("cpu", "npu"), table=table)


def test_flags_override_config_search_and_are_named_in_errors():
  from branching import pipeline
  from common import app

  config = app.load_config_file("branching/configs/quick.py:tiny")
  s = pipeline.settings(config, {"processors": ["cpu", "gpu"], "alpha": None, "gamma": 0.5})
  assert s.processors == ("cpu", "gpu") and s.gamma == 0.5 and s.alpha == config.search.alpha
  assert s.network == config.search.model and s.out == ""
  pipeline.check_settings(s)
  with pytest.raises(ConfigError, match=r"^--gamma = 0\.0"):
    pipeline.check_settings(pipeline.settings(config, {"gamma": 0.0}))
  with pytest.raises(ConfigError, match=r"^--phone = 'nokia'"):
    pipeline.validate(config, {"phone": "nokia"})
