"""What one benchmark request yields, and the statistics over many of them.

A `RequestRecord` is the benchmark's unit: every request produces exactly
one, whether it succeeded or not (the load generator never raises per
request). `summarize` turns the records of one run segment (one model at
one concurrency or arrival rate) into a `Summary`: throughput, latency
percentiles, orchestration overhead and error counts.

Percentiles interpolate linearly between the closest ranks (NumPy's
default), so p50 of [1, 2, 3, 4] is 2.5. Left out on purpose: any I/O
(`client.py` sends requests, `report.py` writes files).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class RequestRecord:
    """One request's fate. Times are seconds; `start_s` is relative to the segment's start."""

    model: str
    mode: str  # closed (fixed concurrency) | open (Poisson arrivals)
    level: float  # concurrency, or arrival rate in requests/s
    index: int
    ok: bool = False
    status: int | None = None  # HTTP status, None when no response arrived
    error: str | None = None
    start_s: float = 0.0
    e2e_s: float = 0.0
    ttft_s: float | None = None  # to the first non-empty content token
    itl_s: list[float] = field(default_factory=list)  # gaps between content chunks
    prompt_tokens: int | None = None
    completion_tokens: int | None = None  # the answer's tokens (the aggregator's, for a mixture)
    generated_tokens: int | None = None  # every call's completion tokens (usage of the whole answer)
    overhead_s: float | None = None  # the gateway's trace: wall time minus critical path
    critical_path_s: float | None = None  # slowest agent per layer + aggregator, from the trace
    path_ttft_s: float | None = None  # slowest agent per layer + the aggregator's own time to first token
    layer_s: list[float] = field(default_factory=list)  # per proposer layer, from the trace

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["itl_s"] = [round(gap, 6) for gap in self.itl_s]
        return data


@dataclass(frozen=True)
class Spread:
    """Percentiles of one quantity; None when no request measured it."""

    p50: float | None
    p95: float | None
    p99: float | None
    mean: float | None
    count: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        if not values:
            return cls(None, None, None, None, 0)
        ordered = sorted(values)
        return cls(
            percentile(ordered, 50), percentile(ordered, 95), percentile(ordered, 99),
            math.fsum(ordered) / len(ordered), len(ordered),
        )  # fmt: skip


@dataclass(frozen=True)
class Summary:
    model: str
    mode: str
    level: float
    requests: int
    ok: int
    errors: int
    wall_s: float
    requests_per_s: float  # successful requests per second of wall time
    output_tokens_per_s: float  # the answers' tokens
    generated_tokens_per_s: float  # every call's tokens (a mixture generates more than it answers)
    ttft_s: Spread
    e2e_s: Spread
    itl_s: Spread
    overhead_s: Spread  # the gateway's own figure (trace)
    client_overhead_s: Spread  # end to end at the client minus the critical path
    added_ttft_s: Spread  # time to first token at the client minus the engines' share of it (trace)
    overhead_share: Spread  # overhead_s / e2e_s per request
    error_kinds: dict[str, int]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def percentile(ordered: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) of sorted values, interpolating linearly between ranks."""
    if not ordered:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} is outside 0..100")
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def throughput(count: float, wall_s: float) -> float:
    return count / wall_s if wall_s > 0 else 0.0


def wall_time(records: Iterable[RequestRecord]) -> float:
    """From the first request's start to the last one's end."""
    spans = [(r.start_s, r.start_s + r.e2e_s) for r in records]
    if not spans:
        return 0.0
    return max(end for _, end in spans) - min(start for start, _ in spans)


def error_kind(record: RequestRecord) -> str:
    """A short class for counting: the HTTP status, or the first words of a client-side error."""
    if record.status is not None and record.status != 200:
        return f"http {record.status}"
    return (record.error or "unknown").split(":")[0][:60]


def summarize(records: Sequence[RequestRecord], wall_s: float | None = None) -> Summary:
    """Statistics of one segment's records (all of one model, mode and level)."""
    if not records:
        raise ValueError("no records to summarize")
    first = records[0]
    wall = wall_time(records) if wall_s is None else wall_s
    good = [r for r in records if r.ok]
    bad = [r for r in records if not r.ok]
    traced = [r for r in good if r.overhead_s is not None]
    with_path = [r for r in good if r.critical_path_s is not None]
    return Summary(
        model=first.model,
        mode=first.mode,
        level=first.level,
        requests=len(records),
        ok=len(good),
        errors=len(bad),
        wall_s=wall,
        requests_per_s=throughput(len(good), wall),
        output_tokens_per_s=throughput(sum(r.completion_tokens or 0 for r in good), wall),
        generated_tokens_per_s=throughput(
            sum(r.generated_tokens if r.generated_tokens is not None else r.completion_tokens or 0 for r in good), wall
        ),
        ttft_s=Spread.of([r.ttft_s for r in good if r.ttft_s is not None]),
        e2e_s=Spread.of([r.e2e_s for r in good]),
        itl_s=Spread.of([gap for r in good for gap in r.itl_s]),
        overhead_s=Spread.of([r.overhead_s for r in traced if r.overhead_s is not None]),
        client_overhead_s=Spread.of(
            [max(0.0, r.e2e_s - r.critical_path_s) for r in with_path if r.critical_path_s is not None]
        ),
        added_ttft_s=Spread.of(
            [r.ttft_s - r.path_ttft_s for r in good if r.ttft_s is not None and r.path_ttft_s is not None]
        ),
        overhead_share=Spread.of([r.overhead_s / r.e2e_s for r in traced if r.overhead_s is not None and r.e2e_s > 0]),
        error_kinds=dict(Counter(error_kind(r) for r in bad).most_common()),
    )
