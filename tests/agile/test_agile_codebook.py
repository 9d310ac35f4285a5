"""The remote codebook: k-means centroid initialisation, symbol entropy, and the collapse guard on a
small training run (the quickstart's fast stage, shared with the deploy tests)."""

import json

import jax.numpy as jnp
import numpy as np

from agile import codebook
from agile.models import centroids_from_logits

# The test-set histogram of the collapsed quick stage (seed 0 with the original's centroid init).
COLLAPSED = [179, 0, 436940, 14, 7, 618, 1, 1]


def test_health_flags_a_collapsed_histogram_and_passes_a_used_one():
  bad = codebook.health(COLLAPSED, 8)
  assert bad["codebook_collapsed"] and bad["symbols_used"] == 7
  np.testing.assert_allclose(bad["symbol_entropy_bits"], 0.0215, atol=1e-4)  # the payload report's figure
  good = codebook.health([300_000, 60_000, 30_000, 20_000, 10_000, 8_000, 5_000, 4_760], 8)
  assert not good["codebook_collapsed"] and good["symbols_used"] == 8
  np.testing.assert_allclose(codebook.health([1] * 8, 8)["symbol_entropy_share"], 1.0, rtol=1e-6)
  one = codebook.health([0, 5, 0, 0], 4)
  assert one["codebook_collapsed"] and np.copysign(1.0, one["symbol_entropy_bits"]) == 1.0  # 0, not -0


def test_symbol_counts_leave_out_masked_rows():
  symbols = jnp.array([[[0, 1], [1, 1]], [[3, 3], [3, 3]]])
  np.testing.assert_array_equal(codebook.symbol_counts(symbols, 4), [1, 3, 0, 4])
  np.testing.assert_array_equal(codebook.symbol_counts(symbols, 4, jnp.array([1.0, 0.0])), [1, 3, 0, 0])


def test_kmeans_centroids_sit_in_the_features_and_invert_the_sigmoid():
  rng = np.random.default_rng(0)
  # ReLU6 features of an untrained extractor: about half exactly 0, the rest spread below 3.
  values = np.concatenate([np.zeros(5000), np.abs(rng.normal(0, 1.0, 5000))])
  c = codebook.kmeans_centroids(values, 8, seed=0)
  assert np.all(np.diff(c) > 0) and 0 < c[0] < 0.05 and c[-1] < 4.5
  assert np.sum(c < 2.0) >= 5  # the codebook resolves where the features are, not at the original's 3.0
  np.testing.assert_allclose(centroids_from_logits(jnp.asarray(codebook.logits_of(c))), c, rtol=1e-5)
  even = codebook.kmeans_centroids(np.zeros(100), 4, seed=0)  # too few distinct values: an even grid
  np.testing.assert_allclose(even, [0.75, 2.25, 3.75, 5.25])


def test_small_run_keeps_its_codebook_and_reports_its_entropy(agile_fast_run):
  workdir, stage = agile_fast_run
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  agile_rows = [r for r in rows if "skewness" in r]
  assert agile_rows and all("symbol_entropy_bits" in r for r in agile_rows)
  floor = codebook.COLLAPSE_RATIO * np.log2(8)
  train = [r["symbol_entropy_bits"] for r in agile_rows if r["split"] == "train"]
  assert min(train) > floor, train  # every logged step, not only the end
  final = json.loads((workdir / "final_metrics.json").read_text())
  assert not final["codebook_collapsed"] and final["symbol_entropy_bits"] > floor
  assert not stage["codebook_collapsed"]
  assert "Remote codebook on the test set" in (workdir / "report.md").read_text()
