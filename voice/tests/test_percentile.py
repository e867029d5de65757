"""One percentile for the dashboard, /metrics, the load test and the benchmarks (voice/percentile.py)."""
import pytest

from voice import live_stats
from voice.percentile import percentile, percentiles


@pytest.mark.parametrize("values, q, expected", [
    ([1, 2, 3, 4, 5], 0.5, 3),
    ([1, 2, 3, 4], 0.5, 2.5),  # the median, between the middle two
    (list(range(101)), 0.95, 95),
    ([900, 1100], 0.95, 1090),  # interpolated, not the nearest sample
    ([7], 0.99, 7),
    ([3, None, 1, 2], 1.0, 3),  # None is not a sample; order does not matter
    ([10, 20], 0.0, 10),
])
def test_linear_interpolation_between_closest_ranks(values, q, expected):
    assert percentile(values, q) == pytest.approx(expected)


def test_no_samples_have_no_percentile_and_a_quantile_is_a_fraction():
    assert percentile([], 0.5) is None and percentile([None], 0.5) is None
    assert percentiles([]) == {"p50": None, "p95": None, "p99": None}
    with pytest.raises(ValueError, match="between 0 and 1"):
        percentile([1], 95)


def test_the_dashboard_and_the_load_test_report_give_the_same_p95():
    from loadtest.report import summarize

    samples = [120.0, 340.0, 560.0, 610.0, 1500.0]
    live_stats.reset()
    for v in samples:
        live_stats.observe("probe_ms", v)
    live = live_stats.snapshot()["latency_ms"]["probe_ms"]
    live_stats.reset()
    assert live["p95"] == pytest.approx(summarize(samples)["p95"], abs=0.05) == pytest.approx(percentile(samples, 0.95))
