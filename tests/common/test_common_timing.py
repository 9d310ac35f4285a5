"""common.timing: interleaved A/B timing calls the variants in turn, round by round."""

from common.timing import measure_interleaved


def test_measure_interleaved_calls_one_of_each_per_round():
  calls = []
  out = measure_interleaved(
    {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=3, warmup=1
  )
  assert calls == ["a", "b"] * 4  # one warm-up round, then three timed rounds
  assert set(out) == {"a", "b"}
  for row in out.values():
    assert row["repeats"] == 3 and 0 <= row["min_s"] <= row["median_s"] <= row["p90_s"] <= row["max_s"]
