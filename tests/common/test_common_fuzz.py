"""Property-based fuzzing of the parsers users feed files to: bandwidth traces (Mahimahi, CSV),
network YAMLs (as parsed documents), offload metrics arrays and trace/metrics values.

Each property: any input either loads into something valid (finite, in range, the declared
shape) or raises the project's error (DataError / ConfigError, shown as one line); no other
exception, no hang, no huge allocation.
"""

from __future__ import annotations

import json
import math

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.errors import ConfigError, DataError

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
_LINE = st.one_of(
  st.integers(-5, 10**18).map(str),
  st.floats(allow_nan=True, allow_infinity=True).map(repr),
  st.text(max_size=12),
  st.sampled_from(["", "#", "time_s,mbps", "1,2", "1;2", "0,1e308", "１２", "1,2,3", "nan,1", "0,-1"]),
)


@FUZZ
@given(lines=st.lists(_LINE, max_size=30))
def test_mahimahi_trace_loads_valid_or_raises_data_error(tmp_path, lines):
  from common import traces

  p = tmp_path / "t.log"
  p.write_text("\n".join(lines), encoding="utf-8")
  try:
    tr = traces.load_mahimahi(p)
  except DataError:
    return
  assert tr.rates_bps.ndim == 1 and len(tr.rates_bps) == len(tr.times_s) >= 1
  assert np.all(np.isfinite(tr.rates_bps)) and tr.rates_bps.min() >= 0 and tr.rates_bps.max() > 0
  assert math.isfinite(tr.period_s) and tr.period_s > 0


_ROWS = st.lists(st.floats(-10, 10) | st.sampled_from([math.nan, math.inf]), min_size=2, max_size=8).map(
  lambda rates: [f"{t},{r!r}" for t, r in enumerate(rates)]
)  # well-formed rows with fuzzed rates (negative, NaN, inf)


@FUZZ
@given(lines=st.lists(st.one_of(_LINE, st.tuples(_LINE, _LINE).map(",".join)), max_size=30) | _ROWS)
def test_csv_trace_loads_valid_or_raises_data_error(tmp_path, lines):
  from common import traces

  p = tmp_path / "t.csv"
  p.write_text("\n".join(lines), encoding="utf-8")
  try:
    tr = traces.load_csv(p)
  except DataError:
    return
  assert len(tr.rates_bps) == len(tr.times_s) >= 2
  assert np.all(np.isfinite(tr.rates_bps)) and tr.rates_bps.min() >= 0
  assert np.all(np.diff(tr.times_s) > 0) and math.isfinite(tr.period_s)


_SCALAR = st.one_of(
  st.none(), st.booleans(), st.integers(-(10**12), 10**12), st.floats(), st.text(max_size=6)
)
_VALUE = st.recursive(_SCALAR, lambda inner: st.lists(inner, max_size=5), max_leaves=12)


@FUZZ
@given(data=st.data())
def test_network_document_with_mutated_keys_builds_or_raises_config_error(data):
  from branching import network

  base = network.to_dict(network.load("tiny/R-tiny-CD.yaml"))
  doc = {sec: dict(v) if isinstance(v, dict) else v for sec, v in base.items()}
  anynet = doc["ANYNET"] = json.loads(json.dumps(doc["ANYNET"]))  # a deep copy, lists and all
  for _ in range(data.draw(st.integers(1, 3))):
    if data.draw(st.booleans()):  # a whole key (any section), or a new one
      sec = data.draw(st.sampled_from(sorted(k for k, v in doc.items() if isinstance(v, dict))))
      key = data.draw(st.sampled_from(sorted(doc[sec]) + ["BOGUS"]))
      doc[sec][key] = data.draw(_VALUE)
    else:  # one entry of a per-stage list (a depth, width, stride, ... of one stage or branch)
      key = data.draw(st.sampled_from(sorted(k for k, v in anynet.items() if isinstance(v, list) and v)))
      i = data.draw(st.integers(0, len(anynet[key]) - 1))
      if isinstance(anynet[key][i], list) and anynet[key][i]:
        anynet[key][i][data.draw(st.integers(0, len(anynet[key][i]) - 1))] = data.draw(_SCALAR)
      else:
        anynet[key][i] = data.draw(_SCALAR)
  try:
    net = network.from_dict(doc, "fuzz.yaml")
  except ConfigError:
    return
  assert network.from_dict(network.to_dict(net), "fuzz.yaml") == net
  assert net.stem_w >= 1 and net.stages and all(stage.branches for stage in net.stages)
  for b in (b for stage in net.stages for b in stage.branches):
    assert all(
      isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in (b.depth, b.width, b.stride)
    )


_KEYS = ("metric_tr", "metric_ts", "wcost_tr", "wcost_ts", "scost_tr", "scost_ts")
_ARRAY = st.one_of(
  st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=6).map(np.asarray),
  st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=4, max_size=4).map(np.asarray),
  st.lists(st.integers(-3, 3), max_size=6).map(np.asarray),
  st.lists(st.lists(st.floats(-1, 1), min_size=2, max_size=2), max_size=3).map(np.asarray),
  st.text(max_size=4).map(np.asarray),
)


@FUZZ
@given(
  mutated=st.dictionaries(st.sampled_from(_KEYS), _ARRAY, max_size=3),
  dropped=st.sets(st.sampled_from(_KEYS), max_size=1),
)
def test_metrics_arrays_validate_or_raise_data_error(mutated, dropped):
  from offload import data as odata

  # a valid file (4 images per split), some arrays replaced by fuzzed ones, maybe one key dropped
  arrays = {k: np.linspace(0.1, 0.9, 4) for k in _KEYS}
  arrays.update(mutated)
  for k in dropped:
    arrays.pop(k)
  try:
    out = odata.validate(arrays, "fuzz.npz")
  except DataError:
    return
  assert set(_KEYS) <= set(out)
  for k in _KEYS:
    assert out[k].ndim == 1 and out[k].dtype == np.float64 and np.all(np.isfinite(out[k]))
  assert len(out["metric_tr"]) == len(out["wcost_tr"]) >= 2
