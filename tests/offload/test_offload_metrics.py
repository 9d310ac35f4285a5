"""Metrics: calibration, entropy, costs, kernel regression, k-fold schema, npz validation."""

import numpy as np
import pytest

from common.errors import DataError
from offload import data as odata
from offload import metrics as om


def test_entropy_and_ranks_by_hand():
  logits = np.array([[2.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
  p = np.exp(logits[0]) / np.exp(logits[0]).sum()
  np.testing.assert_allclose(om.entropy(logits, 1.0), [-(p * np.log(p)).sum(), np.log(3)], rtol=1e-12)
  np.testing.assert_allclose(om.entropy(logits, 0.0), [np.log(3)] * 2)
  np.testing.assert_array_equal(om.ranks(np.array([[3.0, 1.0, 2.0]] * 3), np.array([0, 1, 2])), [1, 3, 2])


def test_costs():
  w, s = np.array([1, 2, 6, 12]), np.array([1, 1, 5, 3])
  np.testing.assert_array_equal(om.costs(w, s, 0)[0], [0, 1, 1, 1])
  np.testing.assert_array_equal(om.costs(w, s, 1)[0], [0, 0, 1, 1])
  np.testing.assert_array_equal(om.costs(w, s, 2)[0], [1, 2, 6, 10])
  np.testing.assert_array_equal(om.costs(w, s, 0)[1], [0, 0, 1, 1])


def test_calibrate_recovers_temperature():
  rng = np.random.default_rng(0)
  true = rng.normal(size=(4000, 5)) * 2.0
  labels = np.array([rng.choice(5, p=np.exp(t) / np.exp(t).sum()) for t in true])
  tinv = om.calibrate(true / 0.8, labels)  # logits too sharp by 1/0.8: best tinv ~ 0.8
  assert tinv == pytest.approx(0.8, abs=0.06)


def test_fit_metric_recovers_conditional_mean():
  rng = np.random.default_rng(1)
  h = rng.uniform(0, 6, 6000)
  pr = 0.1 * h
  r = (rng.uniform(size=h.size) < pr).astype(float)
  xb, yb, bw = om.fit_metric(h, r)
  assert xb.shape == yb.shape == (1000,)
  assert 2.0**-8 * 6 * 0.99 <= bw <= 2.0**-4 * 6 * 1.01
  mid = (xb > 0.5) & (xb < 5.5)
  assert np.abs(yb[mid] - 0.1 * xb[mid]).max() < 0.1
  # Nadaraya-Watson by hand at one point
  x0 = xb[500]
  w = np.exp(-0.5 * ((x0 - h) / bw) ** 2)
  assert yb[500] == pytest.approx((w * r).sum() / w.sum(), rel=1e-9)


def test_kfold_schema_roundtrip(tmp_path):
  rng = np.random.default_rng(2)
  n = 300
  labels = rng.integers(0, 10, n)
  wl = rng.normal(size=(n, 10))
  wl[np.arange(n), labels] += rng.uniform(0, 3, n)
  wrank = om.ranks(wl, labels)
  srank = np.where(rng.uniform(size=n) < 0.9, 1, 3)
  folds = om.kfold_metrics(wl, labels, wrank, srank, np.arange(n) % 3, 0)
  assert len(folds) == 3
  for f in folds:
    assert f["metric_tr"].shape == (200,) and f["metric_ts"].shape == (100,)
    assert f["mtog"].shape == (2, 1000)
  path = odata.save_npz(tmp_path / "fm.npz", folds[0])
  d = odata.prepare(odata.load_npz(path))
  assert np.all(np.diff(d.train.metrics) >= 0) and np.all(np.diff(d.test.metrics) >= 0)
  assert abs(d.train.metrics.mean()) < 1e-5 and d.train.metrics.std() == pytest.approx(1.0, abs=1e-4)
  np.testing.assert_allclose(d.train.rewards.sum(), (folds[0]["wcost_tr"] - folds[0]["scost_tr"]).sum())


def _good():
  return {k: np.arange(10, dtype=float) % 3 for k in odata.REQUIRED}


@pytest.mark.parametrize(
  "mutate,match",
  [
    (lambda a: a.pop("scost_ts"), "lacks"),
    (lambda a: a.__setitem__("metric_tr", np.ones((10, 2))), "shape"),
    (lambda a: a.__setitem__("wcost_tr", np.r_[np.nan, np.ones(9)]), "NaN"),
    (lambda a: a.__setitem__("wcost_ts", np.ones(7)), "length"),
    (lambda a: a.__setitem__("metric_tr", np.ones(10)), "constant"),
  ],
)
def test_malformed_npz_raises_data_error(tmp_path, mutate, match):
  arrays = _good()
  mutate(arrays)
  path = tmp_path / "bad.npz"
  np.savez(path, **arrays)
  with pytest.raises(DataError, match=match):
    odata.load_npz(path)


def test_not_an_npz(tmp_path):
  path = tmp_path / "x.npz"
  path.write_bytes(b"garbage")
  with pytest.raises(DataError, match="not a readable .npz archive"):
    odata.load_npz(path)
  with pytest.raises(DataError, match="does not exist"):
    odata.load_npz(tmp_path / "missing.npz")


def test_synthetic_has_published_statistics():
  d = odata.synthetic(60_000, seed=0)
  weak = d["wcost_ts"].mean()
  assert weak == pytest.approx(0.30, abs=0.01)
  assert d["metric_tr"].max() == pytest.approx(0.67, abs=0.01)
  r = d["wcost_ts"] - d["scost_ts"]
  order = np.argsort(-d["metric_ts"])
  for frac, lb in ((0.05, 0.2693), (0.1, 0.2409), (0.25, 0.1681)):
    k = int(frac * len(r))
    assert weak - r[order[:k]].sum() / len(r) == pytest.approx(lb, abs=0.012)
