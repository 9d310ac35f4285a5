"""Trace generators, loaders (and their errors) and the link model."""

from pathlib import Path

import numpy as np
import pytest

from common import traces
from common.errors import DataError


def test_transfer_end_piecewise():
  tr = traces.Trace("t", np.asarray([0.0, 1.0]), np.asarray([1e6, 2e6]), 2.0)
  assert tr.transfer_end(0.0, 0.5e6) == pytest.approx(0.5)
  assert tr.transfer_end(0.5, 1.5e6) == pytest.approx(1.5)  # 0.5 Mbit then 1 Mbit at 2 Mbit/s
  assert tr.transfer_end(1.5, 2e6) == pytest.approx(3.0)  # 1 Mbit by 2.0, then 1 Mbit at 1 Mbit/s
  assert tr.transfer_end(0.0, 30e6) == pytest.approx(20.0)  # ten whole periods
  assert tr.mean_bps() == pytest.approx(1.5e6)


def test_bits_between_integrates_the_rate_across_pieces_and_periods():
  tr = traces.Trace("t", np.asarray([0.0, 1.0]), np.asarray([1e6, 2e6]), 2.0)
  assert tr.bits_between(0.5, 1.5) == pytest.approx(0.5e6 + 1e6)
  assert tr.bits_between(1.5, 2.5) == pytest.approx(1e6 + 0.5e6)  # into the next period
  assert tr.bits_between(0.0, 20.0) == pytest.approx(30e6)  # ten whole periods
  assert tr.bits_between(1.0, 1.0) == 0.0 and tr.bits_between(2.0, 1.0) == 0.0
  for start, bits in ((0.3, 0.4e6), (1.5, 2e6), (0.7, 7e6)):  # the inverse of transfer_end
    assert tr.bits_between(start, tr.transfer_end(start, bits)) == pytest.approx(bits)


@pytest.mark.parametrize("kind", ["markov", "random_walk", "step"])
def test_synthetic_seeded(kind):
  a, b, c = traces.synthetic(kind, 0, 30), traces.synthetic(kind, 0, 30), traces.synthetic(kind, 1, 30)
  np.testing.assert_array_equal(a.rates_bps, b.rates_bps)
  assert not np.array_equal(a.rates_bps, c.rates_bps)
  assert a.rates_bps.min() > 0 and a.period_s == pytest.approx(30, abs=10)


def test_mahimahi_loader(tmp_path):
  """By hand: 7 opportunities of 1500 bytes in a 199 ms period (Mahimahi replays the file every
  last-timestamp ms): 4 in [0, 100) ms, 3 in [100, 199) ms, so 84 kbit per period, wrapping."""
  p = tmp_path / "link.down"
  p.write_text("\n".join(str(v) for v in [0, 10, 10, 50, 120, 150, 199]) + "\n")
  tr = traces.load_mahimahi(p, bin_ms=100)
  np.testing.assert_allclose(tr.times_s, [0.0, 0.1])
  np.testing.assert_allclose(tr.rates_bps, [4 * 12000 / 0.1, 3 * 12000 / 0.099])
  assert tr.period_s == pytest.approx(0.199)
  assert link_bits(tr, 0.0, 0.199) == pytest.approx(7 * 12000)
  assert link_bits(tr, 0.0, 3 * 0.199) == pytest.approx(21 * 12000)  # three periods
  assert tr.transfer_end(0.0, 7 * 12000) == pytest.approx(0.199)
  shifted = traces.shifted(tr, start_s=0.1, scale=0.5)  # starts in the second bin, half the rate
  assert shifted.rate_at(0.0) == pytest.approx(0.5 * 3 * 12000 / 0.099)
  assert link_bits(shifted, 0.0, 0.199) == pytest.approx(0.5 * 7 * 12000)


def link_bits(trace, start_s, end_s):
  from common.serving.link import delivered_bits

  return delivered_bits(trace, start_s, end_s)


SHARED = Path(__file__).resolve().parents[3] / "shared" / "traces"
# the shared traces' README: length (s), mean (Mbit/s), 10th / 90th percentile of 1-s rates, % seconds at zero
PUBLISHED = {
  "ATT-LTE-driving.up": (1012, 0.83, 0.01, 1.16, 9.3),
  "TMobile-LTE-short.up": (140, 13.3, 3.3, 25.3, 0.0),
  "TMobile-UMTS-driving.up": (931, 0.94, 0.30, 1.42, 2.9),
  "Verizon-EVDO-driving.up": (1065, 0.84, 0.23, 1.19, 2.8),
}


@pytest.mark.skipif(not SHARED.is_dir(), reason=f"the shared cellular traces are not at {SHARED}")
@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_real_cellular_traces_read_as_their_readme_says(name):
  tr = traces.load(str(SHARED / name))
  length, mean, p10, p90, zero = PUBLISHED[name]
  lines = sum(1 for line in (SHARED / name).read_text().splitlines() if line.strip())
  assert tr.period_s == pytest.approx(length, abs=1.0)
  assert tr.mean_bps() * tr.period_s == pytest.approx(lines * 12000)  # every line one 1500-byte packet
  assert tr.mean_bps() / 1e6 == pytest.approx(mean, rel=0.01)
  per_s = np.asarray([link_bits(tr, t, t + 1.0) for t in range(int(tr.period_s))]) / 1e6
  assert np.percentile(per_s, 10) == pytest.approx(p10, abs=0.2) and np.percentile(
    per_s, 90
  ) == pytest.approx(p90, rel=0.05)
  assert 100 * np.mean(per_s == 0) == pytest.approx(zero, abs=0.5)


@pytest.mark.parametrize("text", ["", "12\nabc\n", "5\n3\n", "1.5\n", "-4\n"])
def test_mahimahi_rejects_malformed(tmp_path, text):
  p = tmp_path / "bad.trace"
  p.write_text(text)
  with pytest.raises(DataError):
    traces.load_mahimahi(p)


def test_csv_loader(tmp_path):
  p = tmp_path / "bw.csv"
  p.write_text("time_s,mbps\n0,1.5\n1,3\n2,0.5\n")
  tr = traces.load_csv(p)
  np.testing.assert_allclose(tr.rates_bps, [1.5e6, 3e6, 0.5e6])
  assert tr.period_s == pytest.approx(3.0)
  assert traces.load(str(p)).name == "bw"


@pytest.mark.parametrize(
  "text", ["time,mbps\n", "0,1\n0,2\n", "0,1,2\n1,2,3\n", "0,1\n1,x\n", "0,1\n1,-2\n", "0,1\n1,nan\n"]
)
def test_csv_rejects_malformed(tmp_path, text):
  p = tmp_path / "bad.csv"
  p.write_text(text)
  with pytest.raises(DataError):
    traces.load_csv(p)


def test_missing_file():
  with pytest.raises(DataError, match="does not exist"):
    traces.load("/nonexistent/trace.csv")


@pytest.mark.parametrize(
  "name, content, needle",
  [
    ("t.csv", b"0,1\n1,\x00\x00\xff\n", "binary data"),
    ("t.log", b"\xff\xfe10\n20\n", "not UTF-8"),
    ("t.log", "10\n²\n30\n".encode(), "not a non-negative integer"),
    ("t.log", "10\n١٢\n".encode(), "not a non-negative integer"),
  ],
  ids=["csv binary", "mahimahi not utf-8", "superscript digit", "arabic-indic digits"],
)
def test_text_that_is_not_a_trace_is_named(tmp_path, name, content, needle):
  p = tmp_path / name
  p.write_bytes(content)
  with pytest.raises(DataError, match=needle) as e:
    traces.load(str(p))
  assert str(p) in str(e.value)


def test_a_directory_is_not_a_trace(tmp_path):
  with pytest.raises(DataError, match="not a regular file"):
    traces.load(str(tmp_path))


def _sparse(path, size):
  with open(path, "wb") as f:
    f.truncate(size)


@pytest.mark.parametrize(
  "name, write, needle",
  [
    ("empty.up", lambda p: p.write_text(""), "no delivery timestamps"),
    ("back.up", lambda p: p.write_text("5\n9\n3\n"), "goes back in time"),
    ("bin.up", lambda p: p.write_bytes(b"1\n\x00\x01\n"), "binary data"),
    ("huge.up", lambda p: _sparse(p, (64 << 20) + 1), "more than the"),
    ("long.up", lambda p: p.write_text("1\n99999999999\n"), "at most 86400 s"),
    ("instant.up", lambda p: p.write_text("0\n0\n0\n"), "must last a nonzero time"),
    ("zero.csv", lambda p: p.write_text("time_s,mbps\n0,0\n1,0\n2,0\n"), "zero capacity throughout"),
  ],
  ids=["empty", "not monotone", "binary", "huge file", "huge duration", "zero length", "zero capacity"],
)
def test_a_bad_trace_file_is_one_line_naming_it(tmp_path, name, write, needle):
  p = tmp_path / name
  write(p)
  with pytest.raises(DataError, match=needle) as e:
    traces.load(str(p))
  assert str(p) in str(e.value) and "\n" not in str(e.value)
