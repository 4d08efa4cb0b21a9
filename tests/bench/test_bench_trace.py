"""The engines' share of a request read from the gateway's trace: after the layers, and with aggregator steps."""

from __future__ import annotations

import pytest

from moa_local.bench.client import _read_trace
from moa_local.bench.stats import RequestRecord


def _layer(*latencies: float) -> dict[str, object]:
    return {"duration_s": max(latencies), "agents": [{"latency_s": latency} for latency in latencies]}


def test_after_layers_path_is_the_slowest_agents_then_the_aggregator() -> None:
    record = RequestRecord("mix", "closed", 1, 0)
    trace = {"layers": [_layer(2.0, 5.0)], "aggregator": {"latency_s": 3.0, "ttft_s": 0.25, "completion_tokens": 9}}
    _read_trace(record, trace)
    assert record.critical_path_s == pytest.approx(8.0)
    assert record.path_ttft_s == pytest.approx(5.25)
    assert record.completion_tokens == 9


def test_steps_overlap_the_last_layer_from_the_first_step_on() -> None:
    # Two layers; the aggregator's first step started 0.5 s into the last layer, produced no
    # text, and the second step (at 1.2 s) had its first token 0.1 s after it started.
    record = RequestRecord("mix", "closed", 1, 0)
    trace = {
        "layers": [_layer(1.0, 2.0), _layer(4.0, 6.0)],
        "aggregator": {"latency_s": 3.0, "ttft_s": 0.3},
        "steps": [{"at_s": 0.5, "latency_s": 0.6}, {"at_s": 1.2, "ttft_s": 0.1, "latency_s": 2.4}],
    }
    _read_trace(record, trace)
    assert record.layer_s == [2.0, 6.0]
    assert record.critical_path_s == pytest.approx(2.0 + 0.5 + 3.0)
    assert record.path_ttft_s == pytest.approx(2.0 + 1.2 + 0.1)


def test_steps_without_a_token_leave_the_path_ttft_unknown() -> None:
    record = RequestRecord("mix", "closed", 1, 0)
    trace = {"layers": [_layer(4.0)], "aggregator": {"latency_s": 1.0}, "steps": [{"at_s": 0.5, "latency_s": 1.0}]}
    _read_trace(record, trace)
    assert record.path_ttft_s is None
    assert record.critical_path_s == pytest.approx(1.5)
