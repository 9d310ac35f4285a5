"""Network schema (branching.network): every published YAML loads, round-trips, and malformed ones raise ConfigError."""

import glob

import pytest
import yaml

from branching import network as bcfg
from common.errors import ConfigError, EdgeInferError

PUBLISHED = sorted(glob.glob(str(bcfg.PUBLISHED_DIR / "*" / "*.yaml")))


def test_all_published_configs_load():
  assert len(PUBLISHED) == 52
  for path in PUBLISHED:
    c = bcfg.load(path)
    assert c.stages and all(len(st.branches) <= len(c.devices) for st in c.stages)


def test_r50_cd_fields():
  c = bcfg.published("R-50-CD")
  assert c.devices == ("cpu", "dsp") and c.mb_ver == 2
  assert [(b.depth, b.width, b.group_w) for b in c.stages[0].branches] == [(3, 160, 40), (2, 224, 56)]
  assert [c.stage_out_width(i) for i in range(4)] == [384, 640, 1344, 2816]
  en = bcfg.published("EN-B5-CD")
  assert en.mb_ver == 1 and en.se_on and [b.activation for b in en.stages[3].branches] == ["relu", "silu"]
  assert en.stages[0].branches[0].bot_mul == 1.0 and en.stages[1].branches[1].bot_mul == 6.0


@pytest.mark.parametrize("name", ["R-50-CD", "EN-B5-CD", "RX-4-CDG", "EN-L4-CD", "R-34-C"])
def test_round_trip(name):
  c = bcfg.published(name)
  again = bcfg.from_dict(yaml.safe_load(bcfg.dump(c)), name=name)
  assert again == c


def _doc(**anynet):
  d = yaml.safe_load((bcfg.PUBLISHED_DIR / "mi" / "R-50-CD.yaml").read_text())
  d["ANYNET"].update(anynet)
  return d


@pytest.mark.parametrize(
  "change, needle",
  [
    ({"DEVICES": ["cpu", "npu"]}, "DEVICES"),
    ({"BLOCK_TYPE": "vit"}, "BLOCK_TYPE"),
    ({"DEPTHS": [[3, 2], [3, 4], [4, 6]]}, "per-stage lists"),
    ({"WIDTHS": [[160], [384, 256], [832, 512], [1632, 1184]]}, "WIDTHS[0]"),
    ({"GROUP_WS": [[48, 56], [96, 64], [208, 128], [408, 296]]}, "GROUP_WS[0][0]"),
    ({"STRIDES": [[1, 3], [2, 2], [2, 2], [2, 2]]}, "STRIDES[0][1]"),
    ({"DEPTHS": [[3, 0], [3, 4], [4, 6], [2, 2]]}, "DEPTHS[0][1]"),
    ({"MB_VER": 3}, "MB_VER"),
  ],
)
def test_malformed_yaml_raises_config_error(change, needle):
  with pytest.raises(ConfigError, match=needle.replace("[", r"\[").replace("]", r"\]")):
    bcfg.from_dict(_doc(**change), name="bad")


def test_unparsable_and_missing_files(tmp_path):
  bad = tmp_path / "bad.yaml"
  bad.write_text("ANYNET: [unclosed\n")
  with pytest.raises(ConfigError, match="not valid YAML"):
    bcfg.load(bad)
  with pytest.raises(EdgeInferError, match="not found"):
    bcfg.load(tmp_path / "missing.yaml")
  empty = tmp_path / "empty.yaml"
  empty.write_text("MODEL: {TYPE: anynet}\n")
  with pytest.raises(ConfigError, match="ANYNET"):
    bcfg.load(empty)


def test_save_writes_loadable_yaml(tmp_path):
  c = bcfg.published("RX-1.6-CD")
  path = bcfg.save(c, tmp_path / "x.yaml")
  assert bcfg.load(path).stages == c.stages


def test_cli_reports_malformed_yaml_without_traceback(tmp_path):
  import subprocess
  import sys

  d = _doc(DEVICES=["cpu", "npu"])
  bad = tmp_path / "bad.yaml"
  bad.write_text(yaml.safe_dump(d))
  r = subprocess.run(
    [
      sys.executable,
      "-m",
      "branching.main",
      "count",
      "--network",
      str(bad),
      "--workdir",
      str(tmp_path / "w"),
    ],
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert r.returncode == 2
  assert "ANYNET.DEVICES" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize(
  "content, needle",
  [
    (b"\x00\x01binary\xff", "binary data"),
    (
      "a0: &a0 [x, x, x, x, x, x, x, x, x]\n"
      + "".join(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]\n" for i in range(1, 7)),
      "expands to more than",
    ),
    ("[" * 3000 + "]" * 3000, "nested deeper"),
  ],
  ids=["binary", "billion laughs", "deep"],
)
def test_cli_hostile_yaml_is_one_short_line(tmp_path, content, needle):
  import subprocess
  import sys

  bad = tmp_path / "bad.yaml"
  bad.write_bytes(content if isinstance(content, bytes) else content.encode())
  r = subprocess.run(
    [
      sys.executable,
      "-m",
      "branching.main",
      "count",
      "--network",
      str(bad),
      "--workdir",
      str(tmp_path / "w"),
    ],
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert r.returncode == 2 and needle in r.stderr and "Traceback" not in r.stderr
  assert len(r.stderr) < 1000


@pytest.mark.parametrize(
  "flag, needle",
  [("--alpha=-0.5", "--alpha = -0.5"), ("--config.search.beta=-1", "config.search.beta = -1.0")],
)
def test_cli_negative_search_weights_are_one_line_and_write_nothing(tmp_path, flag, needle):
  import subprocess
  import sys

  out = tmp_path / "found.yaml"
  r = subprocess.run(
    [sys.executable, "-m", "branching.main", "search", flag, f"--out={out}", f"--workdir={tmp_path / 'w'}"],
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert r.returncode == 2 and needle in r.stderr and "Traceback" not in r.stderr
  assert len(r.stderr.strip().splitlines()) == 1
  assert not out.exists() and not (tmp_path / "w").exists()
