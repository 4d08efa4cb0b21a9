"""Every recording site, through the real gateway over fake engines: calls, layers, requests, probes.

Each test gets a gateway with its own fresh `Metrics` registry. The fake
engines make counts exact and inject the faults (errors, hangs, slow agents,
dropped clients) whose counting is the point.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.support.fake_fixtures import FakeEngineFactory
from tests.support.gateway_fixtures import GatewayFactory, GatewayServer, fake_config, mixture

USER = [{"role": "user", "content": "Name three rivers."}]


def settled(gw: GatewayServer, name: str, expected: float, **labels: str) -> None:
    """Metrics are recorded in `finally` blocks, possibly just after the answer left: wait for them."""
    gw.wait_for(lambda: gw.metric(name, **labels) == expected, what=f"{name}{labels} == {expected} "
                f"(is {gw.metric(name, **labels)})")  # fmt: skip


def test_fault_a_good_mixture_request_records_every_site(
    fake_engine: FakeEngineFactory, gateway_server: GatewayFactory
) -> None:
    a, b = fake_engine(model="a", tokens=5), fake_engine(model="b", tokens=7)
    gw = gateway_server(fake_config({"a": a, "b": b}, {"mix": mixture(["a", "b"], "a")}), probe=False)
    reply = gw.client().chat.completions.create(model="mix", messages=USER)  # type: ignore[arg-type]
    assert reply.usage is not None
    settled(gw, "moa_requests_total", 1, mixture="mix", outcome="ok")
    assert gw.metric("moa_request_duration_seconds_count", mixture="mix") == 1
    assert gw.metric("moa_time_to_first_token_seconds_count", mixture="mix") == 1
    assert gw.metric("moa_overhead_seconds_count", mixture="mix") == 1
    assert gw.metric("moa_layer_duration_seconds_count", mixture="mix", layer="1") == 1
    assert gw.metric("moa_proposals_used_sum", mixture="mix", layer="1") == 2
    assert gw.metric("moa_agent_calls_total", endpoint="a", role="proposer", outcome="ok") == 1
    assert gw.metric("moa_agent_calls_total", endpoint="b", role="proposer", outcome="ok") == 1
    assert gw.metric("moa_agent_calls_total", endpoint="a", role="aggregator", outcome="ok") == 1
    assert gw.metric("moa_agent_duration_seconds_count", endpoint="a", role="aggregator") == 1
    assert gw.metric("moa_agent_time_to_first_token_seconds_count", endpoint="a") == 2
    tokens = {
        kind: sum(gw.metric("moa_tokens_total", endpoint=e, kind=kind) for e in ("a", "b"))
        for kind in ("prompt", "completion")
    }
    assert tokens == {"prompt": reply.usage.prompt_tokens, "completion": reply.usage.completion_tokens}
    settled(gw, "moa_inflight", 0, endpoint="a")
    settled(gw, "moa_inflight", 0, endpoint="b")
    settled(gw, "moa_gateway_inflight", 0)


def test_fault_a_failed_proposer_is_counted_and_the_layer_goes_on(
    fake_engine: FakeEngineFactory, gateway_server: GatewayFactory
) -> None:
    a, b = fake_engine(model="a"), fake_engine(model="b", status=500)
    gw = gateway_server(fake_config({"a": a, "b": b}, {"mix": mixture(["a", "b"], "a")}), probe=False)
    gw.client().chat.completions.create(model="mix", messages=USER)  # type: ignore[arg-type]
    settled(gw, "moa_requests_total", 1, mixture="mix", outcome="ok")
    assert gw.metric("moa_agent_calls_total", endpoint="b", role="proposer", outcome="error") == 1
    assert gw.metric("moa_agent_duration_seconds_count", endpoint="b", role="proposer") == 1
    assert gw.metric("moa_agent_time_to_first_token_seconds_count", endpoint="b") == 0
    assert gw.metric("moa_proposals_used_sum", mixture="mix", layer="1") == 1
    assert gw.metric("moa_quorum_misses_total", mixture="mix", layer="1") == 0


def test_fault_retries_are_counted(fake_engine: FakeEngineFactory, gateway_server: GatewayFactory) -> None:
    a = fake_engine(model="a", status=503, times=1)
    gw = gateway_server(fake_config({"a": a}, max_retries=2), probe=False)
    gw.client().chat.completions.create(model="a", messages=USER)  # type: ignore[arg-type]
    settled(gw, "moa_requests_total", 1, mixture="a", outcome="ok")
    assert gw.metric("moa_agent_retries_total", endpoint="a") == 1
    assert gw.metric("moa_agent_calls_total", endpoint="a", role="aggregator", outcome="ok") == 1


def test_fault_a_missed_quorum_counts_the_layer_and_the_failed_request(
    fake_engine: FakeEngineFactory, gateway_server: GatewayFactory
) -> None:
    a, b = fake_engine(model="a", status=500), fake_engine(model="b", status=500)
    gw = gateway_server(fake_config({"a": a, "b": b}, {"mix": mixture(["a", "b"], "a", min_ok=1)}), probe=False)
    response = httpx.post(f"{gw.base_url}/chat/completions", json={"model": "mix", "messages": USER}, timeout=20)
    assert response.status_code == 503
    settled(gw, "moa_requests_total", 1, mixture="mix", outcome="error")
    assert gw.metric("moa_agent_calls_total", endpoint="a", role="proposer", outcome="error") == 1
    assert gw.metric("moa_agent_calls_total", endpoint="b", role="proposer", outcome="error") == 1
    assert gw.metric("moa_agent_calls_total", endpoint="a", role="aggregator", outcome="ok") == 0
    assert gw.metric("moa_quorum_misses_total", mixture="mix", layer="1") == 1
    assert gw.metric("moa_layer_duration_seconds_count", mixture="mix", layer="1") == 1
    assert gw.metric("moa_proposals_used_sum", mixture="mix", layer="1") == 0
    assert gw.metric("moa_overhead_seconds_count", mixture="mix") == 0  # only answered requests have one


def test_fault_a_hung_engine_is_a_timeout(fake_engine: FakeEngineFactory, gateway_server: GatewayFactory) -> None:
    a, b = fake_engine(model="a"), fake_engine(model="b", hang=True)
    config = fake_config({"a": a, "b": b}, {"mix": mixture(["a", "b"], "a")}, timeout_s=0.5)
    gw = gateway_server(config, probe=False)
    gw.client().chat.completions.create(model="mix", messages=USER)  # type: ignore[arg-type]
    settled(gw, "moa_agent_calls_total", 1, endpoint="b", role="proposer", outcome="timeout")
    settled(gw, "moa_requests_total", 1, mixture="mix", outcome="ok")
    assert gw.metric("moa_inflight", endpoint="b") == 0


def test_fault_an_agent_past_the_layer_deadline_is_late(
    fake_engine: FakeEngineFactory, gateway_server: GatewayFactory
) -> None:
    a, b = fake_engine(model="a"), fake_engine(model="b", latency_ms=3000)
    gw = gateway_server(fake_config({"a": a, "b": b}, {"mix": mixture(["a", "b"], "a", deadline_s=0.5)}), probe=False)
    gw.client().chat.completions.create(model="mix", messages=USER)  # type: ignore[arg-type]
    settled(gw, "moa_requests_total", 1, mixture="mix", outcome="ok")
    settled(gw, "moa_agent_calls_total", 1, endpoint="b", role="proposer", outcome="late")
    assert gw.metric("moa_proposals_used_sum", mixture="mix", layer="1") == 1


def test_fault_an_open_circuit_skips_and_shows(fake_engine: FakeEngineFactory, gateway_server: GatewayFactory) -> None:
    a, b = fake_engine(model="a"), fake_engine(model="b", status=500)
    config = fake_config({"a": a, "b": b}, {"mix": mixture(["a", "b"], "a")})
    config = config.model_copy(
        update={"endpoints": {**config.endpoints, "b": config.endpoints["b"].model_copy(
            update={"circuit": config.endpoints["b"].circuit.model_copy(update={"failures": 1, "cooldown_s": 60})})}}
    )  # fmt: skip
    gw = gateway_server(config, probe=False)
    for _ in range(2):
        gw.client().chat.completions.create(model="mix", messages=USER)  # type: ignore[arg-type]
    settled(gw, "moa_requests_total", 2, mixture="mix", outcome="ok")
    assert gw.metric("moa_agent_calls_total", endpoint="b", role="proposer", outcome="error") == 1
    assert gw.metric("moa_agent_calls_total", endpoint="b", role="proposer", outcome="skipped") == 1
    assert gw.metric("moa_agent_duration_seconds_count", endpoint="b", role="proposer") == 1  # the real call only
    assert gw.metric("moa_circuit_open", endpoint="b") == 1
    assert gw.metric("moa_circuit_open", endpoint="a") == 0


def test_fault_a_client_that_leaves_is_counted_as_cancelled(
    fake_engine: FakeEngineFactory, gateway_server: GatewayFactory
) -> None:
    p, a = fake_engine(model="p", tokens=2), fake_engine(model="a", tokens=500, token_delay_ms=20)
    gw = gateway_server(fake_config({"p": p, "a": a}, {"mix": mixture(["p"], "a")}), probe=False)
    stream = gw.client().chat.completions.create(model="mix", messages=USER, stream=True)  # type: ignore[arg-type]
    next(iter(stream))
    stream.close()
    settled(gw, "moa_requests_total", 1, mixture="mix", outcome="cancelled")
    settled(gw, "moa_agent_calls_total", 1, endpoint="a", role="aggregator", outcome="cancelled")
    settled(gw, "moa_inflight", 0, endpoint="a")
    assert gw.metric("moa_agent_calls_total", endpoint="p", role="proposer", outcome="ok") == 1
    assert gw.metric("moa_overhead_seconds_count", mixture="mix") == 0
    settled(gw, "moa_gateway_inflight", 0)


def test_fault_requests_over_the_inflight_limit_are_rejected(
    fake_engine: FakeEngineFactory, gateway_server: GatewayFactory
) -> None:
    a = fake_engine(model="a", hang=True)
    gw = gateway_server(fake_config({"a": a}, gateway={"max_inflight": 1}, timeout_s=2), probe=False)
    body = {"model": "a", "messages": USER}
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(httpx.post, f"{gw.base_url}/chat/completions", json=body, timeout=10)
        gw.wait_for(lambda: gw.metric("moa_gateway_inflight") == 1, what="first request in flight")
        second = httpx.post(f"{gw.base_url}/chat/completions", json=body, timeout=10)
        assert second.status_code == 429
        assert gw.metric("moa_requests_total", mixture="a", outcome="rejected") == 1  # the model it named
        stranger = httpx.post(f"{gw.base_url}/chat/completions", json={**body, "model": "no such model"}, timeout=10)
        assert stranger.status_code == 429
        assert gw.metric("moa_requests_total", mixture="unknown", outcome="rejected") == 1  # never the raw name
        assert first.result().status_code == 502  # the hung engine call timed out (a backend timeout)
    settled(gw, "moa_gateway_inflight", 0)
    settled(gw, "moa_requests_total", 1, mixture="a", outcome="timeout")


def test_fault_probes_set_endpoint_up(fake_engine: FakeEngineFactory, gateway_server: GatewayFactory) -> None:
    a, b = fake_engine(model="a"), fake_engine(model="b")
    gw = gateway_server(fake_config({"a": a, "b": b}, gateway={"probe_interval_s": 0.1}))
    settled(gw, "moa_endpoint_up", 1, endpoint="a")
    settled(gw, "moa_endpoint_up", 1, endpoint="b")
    b.stop()
    settled(gw, "moa_endpoint_up", 0, endpoint="b")
    assert gw.metric("moa_endpoint_up", endpoint="a") == 1
    b.restart()
    settled(gw, "moa_endpoint_up", 1, endpoint="b")


def test_metrics_route_serves_prometheus_text(fake_engine: FakeEngineFactory, gateway_server: GatewayFactory) -> None:
    a = fake_engine(model="a")
    gw = gateway_server(fake_config({"a": a}, {"mix": mixture(["a"], "a")}), probe=False)
    gw.client().chat.completions.create(model="mix", messages=USER)  # type: ignore[arg-type]
    settled(gw, "moa_requests_total", 1, mixture="mix", outcome="ok")
    started = time.monotonic()
    response = httpx.get(f"{gw.url}/metrics", timeout=5)
    assert time.monotonic() - started < 5
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert 'moa_requests_total{mixture="mix",outcome="ok"} 1.0' in response.text


# The exposition format lists labels in alphabetical order.
@pytest.mark.parametrize("series", ['moa_requests_total{mixture="mix",outcome="error"} 0.0',
                                    'moa_quorum_misses_total{layer="1",mixture="mix"} 0.0',
                                    'moa_agent_calls_total{endpoint="a",outcome="error",role="proposer"} 0.0',
                                    'moa_tokens_total{endpoint="a",kind="completion"} 0.0'])  # fmt: skip
def test_configured_series_exist_at_zero_before_any_traffic(
    series: str, fake_engine: FakeEngineFactory, gateway_server: GatewayFactory
) -> None:
    a = fake_engine(model="a")
    gw = gateway_server(fake_config({"a": a}, {"mix": mixture(["a"], "a")}), probe=False)
    assert series in httpx.get(f"{gw.url}/metrics", timeout=5).text
