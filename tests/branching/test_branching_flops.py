"""MAC / parameter counting: hand counts on a tiny config, the digest's published figures, Flax param trees."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from branching import flops, models
from branching import network as bcfg

TINY = {
  "MODEL": {"NUM_CLASSES": 10},
  "ANYNET": {
    "STEM_TYPE": "simple_stem_in",
    "STEM_W": 8,
    "STEM_K": 3,
    "BLOCK_TYPE": "res_basic_block",
    "STRIDES": [[2, 2]],
    "DEPTHS": [[1, 2]],
    "WIDTHS": [[16, 8]],
    "BOT_MULS": [1],
    "GROUP_WS": [[16, 8]],
    "DEVICES": ["cpu", "dsp"],
    "ORIGINAL_WIDTHS": [24],
  },
}


def test_tiny_config_hand_count():
  c = bcfg.from_dict(TINY, "tiny")
  # 32 px: stem 3x3/2 -> 16x16x8; branch 0: one basic block 8->16 stride 2 -> 8x8; branch 1: two 8->8 blocks,
  # the first stride 2 (w_in == w_out but stride 2 -> projection); concat 24; GAP; FC 24 -> 10.
  stem = 9 * 3 * 8 * 16 * 16
  b0 = 9 * 8 * 16 * 64 + 9 * 16 * 16 * 64 + 8 * 16 * 64
  b1 = (9 * 8 * 8 * 64 + 9 * 8 * 8 * 64 + 8 * 8 * 64) + (2 * 9 * 8 * 8 * 64)
  fc = 24 * 10 + 10
  p_stem = 9 * 3 * 8 + 16
  p_b0 = 9 * 8 * 16 + 32 + 9 * 16 * 16 + 32 + 8 * 16 + 32
  p_b1 = (9 * 8 * 8 + 16) * 2 + (8 * 8 + 16) + (9 * 8 * 8 + 16) * 2
  r = flops.count(c, 32)
  assert r["macs"] == stem + b0 + b1 + fc
  assert r["params"] == p_stem + p_b0 + p_b1 + fc
  assert r["pycls_macs"] == r["macs"]
  assert flops.stage_macs(c, 32) == [[b0, b1]]


def test_make_divisible():
  assert [flops.make_divisible(v, 8) for v in (3, 12, 13.5, 100, 20)] == [8, 16, 16, 104, 24]


@pytest.mark.parametrize(
  "name, size, gmacs, mparams",
  [
    ("R-50-C", 224, 4.09, 25.6),
    ("R-50-CD", 224, 3.62, 21.9),
    ("R-34-C", 224, 3.66, None),
    ("RX-1.6-C", 224, 1.60, None),
  ],
)
def test_published_figures(name, size, gmacs, mparams):
  r = flops.count(bcfg.published(name), size)
  assert round(r["macs"] / 1e9, 2) == gmacs
  if mparams:
    assert round(r["params"] / 1e6, 1) == mparams


def test_en_b5_cd_matches_pycls_log_and_counts_output_projections():
  r = flops.count(bcfg.published("EN-B5-CD"), 456)
  # pycls's training log: "flops: 10735999342, params: 31167414" (no MB_VER-1 output projections).
  assert r["pycls_macs"] == 10735999342 and r["pycls_params"] == 31167414
  assert round(r["macs"] / 1e9, 2) == 10.89 and r["params"] > r["pycls_params"]


def test_rx16_cdg_counts_as_pycls_with_original_widths():
  # RX-1.6-CDG (three processors, stage 1 with two branches) states ORIGINAL_WIDTHS 696 and 1896 for stages
  # 3 and 4, whose branches concatenate 312+168+144 = 624 and 696+672+504 = 1872 channels. pycls's
  # complexity feeds stage 4 (and the head) o_i channels; the deployed graph feeds the concat.
  c = bcfg.published("RX-1.6-CDG")
  assert [len(st.branches) for st in c.stages] == [2, 3, 3, 3]
  assert [st.out_width for st in c.stages] == [72, 264, 624, 1872]
  r = flops.count(c, 224)
  # By hand: 72 more input channels into the three first blocks of stage 4 (a_conv 1x1 at 14x14, proj_conv
  # 1x1 stride 2 at 7x7, bottleneck = output width since BOT_MUL 1), 24 more into the FC.
  extra_macs = 72 * (696 + 672 + 504) * (14 * 14 + 7 * 7) + 24 * 1000
  extra_params = 72 * (696 + 672 + 504) * 2 + 24 * 1000
  assert r["pycls_macs"] - r["macs"] == extra_macs
  assert r["pycls_params"] - r["params"] == extra_params
  assert round(r["pycls_macs"] / 1e9, 2) == 1.54  # the digest's pycls count (1.51 before)
  # the model runs the concat: its parameter tree is `params`, and stage 4 reads 624 channels
  v = jax.eval_shape(lambda: models.AnyNet(c).init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)), train=False))
  assert models.param_count(v["params"]) == r["params"]
  assert v["params"]["s4_cpu_b1"]["s4_cpu_b1_a_conv"]["conv"]["kernel"].shape[-2] == 312 + 168 + 144


@pytest.mark.parametrize("name, gmacs", [("EN-B5-C", 2.35), ("RX-4-CDG", 3.62), ("R-50-CD", 3.62)])
def test_pycls_counts_of_configs_whose_widths_disagree(name, gmacs):
  r = flops.count(bcfg.published(name), 224)
  assert round(r["pycls_macs"] / 1e9, 2) == gmacs


@pytest.mark.parametrize("name", ["R-50-CD", "EN-B5-CD", "RX-1.6-CDG", "R-34-CD"])
def test_flax_param_count_matches(name):
  c = bcfg.published(name)
  v = jax.eval_shape(lambda: models.AnyNet(c).init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)), train=False))
  assert models.param_count(v["params"]) == flops.count(c, 64)["params"]


def test_one_device_stretched_config_reproduces_single_branch():
  single = bcfg.load("tiny/R-tiny-C.yaml")
  # The same network written as a stretched config (two processors listed, each stage one branch).
  one_dev = single.replace(devices=("cpu", "dsp"), name="one-device")
  m1, m2 = models.AnyNet(single), models.AnyNet(one_dev)
  x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
  v1 = m1.init(jax.random.key(0), x, train=False)
  v2 = m2.init(jax.random.key(0), x, train=False)
  s1 = jax.tree_util.tree_map(jnp.shape, v1)
  assert s1 == jax.tree_util.tree_map(jnp.shape, v2)
  np.testing.assert_allclose(m1.apply(v1, x, train=False)[0], m2.apply(v1, x, train=False)[0], rtol=1e-6)
  # and the stretched model's stage shapes follow the config
  cd = bcfg.load("tiny/R-tiny-CD.yaml")
  m = models.AnyNet(cd)
  v = m.init(jax.random.key(0), x, train=False)
  _, aux = m.apply(v, x, train=False)
  assert [o.shape[-1] for o in aux["stage_outputs"]] == [32, 80, 160]
  assert [o.shape[-1] for o in aux["branch_outputs"][1]] == [48, 32]


def test_branch_equals_standalone_branch():
  cd = bcfg.load("tiny/R-tiny-CD.yaml")
  m = models.AnyNet(cd)
  x = jax.random.normal(jax.random.key(2), (2, 32, 32, 3))
  v = m.init(jax.random.key(0), x, train=False)
  _, aux = m.apply(v, x, train=False)
  stage_in = aux["stage_outputs"][1]
  for j in range(2):
    alone = m.apply(v, stage_in, train=False, part=("branch", 2, j))
    np.testing.assert_allclose(alone, aux["branch_outputs"][2][j], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(
    jnp.concatenate(aux["branch_outputs"][2], -1), aux["stage_outputs"][2], rtol=0, atol=0
  )
