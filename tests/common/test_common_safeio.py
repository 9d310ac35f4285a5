"""Readers of user and workdir files: every malformed input is the project's error, naming the file."""

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common import provenance, safeio
from common.errors import ConfigError, DataError

SETTINGS = settings(
  max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def test_quote_bounds_what_an_error_message_prints():
  assert safeio.quote("x" * 10) == repr("x" * 10)
  q = safeio.quote(list(range(100_000)))
  assert len(q) <= 120 and q.endswith("chars)")


@pytest.mark.parametrize(
  "content, match",
  [
    (b"\x00\x01\x02binary", "binary data"),
    (b"\xff\xfe\xfa not utf-8", "not UTF-8"),
  ],
)
def test_read_text_refuses_binary(tmp_path, content, match):
  p = tmp_path / "trace.csv"
  p.write_bytes(content)
  with pytest.raises(DataError, match=match) as e:
    safeio.read_text(p, what="trace file")
  assert str(p) in str(e.value)


def test_read_text_refuses_a_directory_a_missing_file_and_a_huge_file(tmp_path):
  with pytest.raises(DataError, match="not a regular file"):
    safeio.read_text(tmp_path)
  with pytest.raises(DataError, match="does not exist"):
    safeio.read_text(tmp_path / "nope.txt")
  big = tmp_path / "big.txt"
  big.write_bytes(b"1\n" * 600)
  with pytest.raises(DataError, match="more than the 1000"):
    safeio.read_text(big, max_bytes=1000)


@pytest.mark.parametrize(
  "text, value", [("12", 12), ("-3", -3), (" +7 ", 7), ("²", None), ("١٢", None), ("1.5", None)]
)
def test_parse_decimal_int_takes_ascii_digits_only(text, value):
  assert safeio.parse_decimal_int(text) == value


def test_yaml_billion_laughs_is_refused_fast(tmp_path):
  lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
  for i in range(1, 7):  # 9**7 nodes once expanded
    lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
  p = tmp_path / "laughs.yaml"
  p.write_text("\n".join(lines) + "\n")
  with pytest.raises(ConfigError, match="expands to more than") as e:
    safeio.load_yaml(p, what="network config", error=ConfigError)
  assert len(str(e.value)) < 400


def test_yaml_nested_thousands_deep_is_refused(tmp_path):
  p = tmp_path / "deep.yaml"
  p.write_text("[" * 5000 + "]" * 5000)
  with pytest.raises(DataError, match="nested deeper") as e:
    safeio.load_yaml(p)
  assert len(str(e.value)) < 400


def test_yaml_good_file_with_a_few_aliases_loads(tmp_path):
  p = tmp_path / "ok.yaml"
  p.write_text("base: &b {w: 3}\nstages: [*b, *b]\n")
  assert safeio.load_yaml(p) == {"base": {"w": 3}, "stages": [{"w": 3}, {"w": 3}]}


@SETTINGS
@given(data=st.binary(max_size=300))
def test_yaml_any_bytes_load_or_raise_the_projects_error(tmp_path, data):
  p = tmp_path / "fuzz.yaml"
  p.write_bytes(data)
  try:
    safeio.load_yaml(p)
  except DataError as e:
    assert str(p) in str(e)


@SETTINGS
@given(data=st.binary(max_size=300))
def test_json_and_npz_any_bytes_raise_the_projects_error(tmp_path, data):
  for name, load in (
    ("r.json", lambda p: safeio.load_json(p, keys=("a",))),
    ("r.npz", safeio.load_npz),
    ("r.npy", safeio.load_array),
  ):
    p = tmp_path / name
    p.write_bytes(data)
    try:
      load(p)
    except DataError as e:
      assert str(p) in str(e)


@pytest.mark.parametrize("data", [b"PK\x03\x04 a zip header, then garbage", b"\x93NUMPY\x01\x00garbage", b""])
def test_npz_and_npy_with_a_valid_magic_and_garbage_after_it_are_named(tmp_path, data):
  for name, load in (("r.npz", safeio.load_npz), ("r.npy", safeio.load_array)):
    p = tmp_path / name
    p.write_bytes(data)
    with pytest.raises(DataError, match=name):
      load(p)


def test_load_array_checks_shape_dtype_and_finiteness(tmp_path):
  p = tmp_path / "correct.npy"
  np.save(p, np.ones((3, 5), bool))
  assert safeio.load_array(p, shape=(None, 5), dtype="bool").shape == (3, 5)
  with pytest.raises(DataError, match=r"shape \(3, 5\), expected \(any, 4\)"):
    safeio.load_array(p, shape=(None, 4))
  with pytest.raises(DataError, match="dtype bool, expected float"):
    safeio.load_array(p, dtype="floating")
  np.save(p, np.array([1.0, np.inf]))
  with pytest.raises(DataError, match="NaN or infinite"):
    safeio.load_array(p)


def test_provenance_names_the_changed_key(tmp_path):
  out = tmp_path / "knapsack.json"
  out.write_text("{}")
  config = {"seed": 0, "knapsack": {"budgets": [0.25, 0.5], "min_width": 2}, "export": {"int8": True}}
  provenance.record(out, config, ("seed", "knapsack"))
  deps = {"knapsack.json": ("seed", "knapsack")}
  provenance.check(tmp_path, config, deps)
  provenance.check(tmp_path, {**config, "export": {"int8": False}}, deps)  # not a dependency
  changed = json.loads(json.dumps(config))
  changed["knapsack"]["budgets"] = [0.3]
  with pytest.raises(ConfigError, match=r"config\.knapsack\.budgets was \[0\.25, 0\.5\], now \[0\.3\]"):
    provenance.check(tmp_path, changed, deps)


def test_provenance_dotted_sections_and_keys_left_out(tmp_path):
  out = tmp_path / "checkpoints"
  out.mkdir()
  config = {
    "seed": 0,
    "metrics": {"classifiers": {"num_epochs": 2, "checkpoint_every": 5}, "fold": 0},
    "dqn": {"iterations": 10, "discount": 0.9},
  }
  keys = ("seed", "metrics.classifiers", "-metrics.classifiers.checkpoint_every", "dqn", "-dqn.iterations")
  assert provenance.sections(config, keys) == {
    "seed": 0,
    "metrics.classifiers": {"num_epochs": 2},
    "dqn": {"discount": 0.9},
  }
  deps = {"checkpoints": keys}
  provenance.record_all(tmp_path, config, deps, "checkpoints")
  longer = json.loads(json.dumps(config))
  longer["dqn"]["iterations"] = 100  # a longer run continues from the checkpoints
  longer["metrics"]["classifiers"]["checkpoint_every"] = 1
  longer["metrics"]["fold"] = 3  # not a dependency
  provenance.check(tmp_path, longer, deps)
  longer["metrics"]["classifiers"]["num_epochs"] = 3
  with pytest.raises(ConfigError, match=r"config\.metrics\.classifiers\.num_epochs was 2, now 3"):
    provenance.check(tmp_path, longer, deps)
