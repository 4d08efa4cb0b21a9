"""The benchmark's statistics on synthetic records: percentiles, throughput, overhead, errors."""

from __future__ import annotations

import pytest

from moa_local.bench.stats import RequestRecord, Spread, percentile, summarize, throughput, wall_time


def record(index: int, **fields: object) -> RequestRecord:
    base = RequestRecord("mix", "closed", 4.0, index, ok=True, status=200)
    for name, value in fields.items():
        setattr(base, name, value)
    return base


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        ([1.0, 2.0, 3.0, 4.0], 50, 2.5),
        ([1.0, 2.0, 3.0, 4.0], 0, 1.0),
        ([1.0, 2.0, 3.0, 4.0], 100, 4.0),
        ([1.0, 2.0, 3.0, 4.0], 25, 1.75),  # numpy.percentile(..., 25) == 1.75
        ([float(v) for v in range(1, 101)], 99, 99.01),
        ([float(v) for v in range(1, 101)], 95, 95.05),
        ([7.0], 99, 7.0),
    ],
)
def test_percentile_interpolates_linearly_between_ranks(values: list[float], q: float, expected: float) -> None:
    assert percentile(values, q) == pytest.approx(expected)


def test_percentile_refuses_nonsense() -> None:
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_spread_of_nothing_is_empty_and_of_values_is_sorted_first() -> None:
    assert Spread.of([]) == Spread(None, None, None, None, 0)
    spread = Spread.of([3.0, 1.0, 2.0])
    assert (spread.p50, spread.mean, spread.count) == (2.0, 2.0, 3)


def test_throughput_and_wall_time() -> None:
    assert throughput(10, 4.0) == 2.5
    assert throughput(10, 0.0) == 0.0
    records = [record(0, start_s=1.0, e2e_s=2.0), record(1, start_s=2.0, e2e_s=3.5)]
    assert wall_time(records) == pytest.approx(4.5)  # from 1.0 to 5.5
    assert wall_time([]) == 0.0


def test_summary_counts_only_successes_in_throughput_and_latency() -> None:
    records = [
        record(
            i,
            start_s=float(i),
            e2e_s=1.0,
            ttft_s=0.1 * (i + 1),
            itl_s=[0.01, 0.03],
            completion_tokens=10,
            generated_tokens=40,
            prompt_tokens=5,
        )
        for i in range(4)
    ]
    records.append(record(4, ok=False, status=502, error="502: qwen: engine answered 500", e2e_s=0.2))
    records.append(record(5, ok=False, status=None, error="ConnectError: refused", e2e_s=0.0))
    summary = summarize(records, wall_s=5.0)
    assert (summary.requests, summary.ok, summary.errors) == (6, 4, 2)
    assert summary.requests_per_s == pytest.approx(0.8)
    assert summary.output_tokens_per_s == pytest.approx(8.0)  # 40 answer tokens / 5 s
    assert summary.generated_tokens_per_s == pytest.approx(32.0)  # 160 tokens of every call / 5 s
    assert summary.ttft_s.p50 == pytest.approx(0.25)
    assert summary.e2e_s.p99 == pytest.approx(1.0)  # failures are not latencies
    assert summary.itl_s.count == 8 and summary.itl_s.p50 == pytest.approx(0.02)
    assert summary.error_kinds == {"http 502": 1, "ConnectError": 1}
    assert summary.overhead_s.count == 0 and summary.overhead_share.p50 is None


def test_summary_overhead_from_the_trace_and_at_the_client() -> None:
    records = [
        record(i, e2e_s=1.0, overhead_s=0.001 * (i + 1), critical_path_s=0.99 - 0.001 * i, completion_tokens=1)
        for i in range(5)
    ]
    summary = summarize(records, wall_s=1.0)
    assert summary.overhead_s.p50 == pytest.approx(0.003)
    assert summary.overhead_s.p99 == pytest.approx(0.00496)
    assert summary.overhead_share.p50 == pytest.approx(0.003)
    # client-side: e2e minus critical path = 0.01 + 0.001 * i
    assert summary.client_overhead_s.p50 == pytest.approx(0.012)


def test_gateway_part_of_ttft_is_client_ttft_minus_the_engines_part() -> None:
    records = [record(i, e2e_s=1.0, ttft_s=0.5 + 0.001 * i, path_ttft_s=0.49) for i in range(3)]
    records.append(record(3, e2e_s=1.0, ttft_s=0.5))  # no trace: not counted
    summary = summarize(records, wall_s=1.0)
    assert summary.added_ttft_s.count == 3
    assert summary.added_ttft_s.p50 == pytest.approx(0.011)


def test_summary_falls_back_to_answer_tokens_when_usage_is_missing() -> None:
    summary = summarize([record(0, e2e_s=1.0, completion_tokens=7, generated_tokens=None)], wall_s=2.0)
    assert summary.generated_tokens_per_s == pytest.approx(3.5)


def test_summary_of_no_records_is_an_error_and_wall_defaults_to_the_records_span() -> None:
    with pytest.raises(ValueError):
        summarize([])
    summary = summarize([record(0, start_s=0.5, e2e_s=2.0, completion_tokens=4)])
    assert summary.wall_s == pytest.approx(2.0) and summary.requests_per_s == pytest.approx(0.5)
