"""Fault injection against the endpoint pool, over real loopback HTTP to the fake engine."""

from __future__ import annotations

import asyncio
import re
import time
from contextlib import aclosing
from typing import TYPE_CHECKING

import pytest
from prometheus_client import CollectorRegistry

from moa_local.engines.breaker import CircuitBreaker
from moa_local.errors import (
    EndpointStatusError,
    EndpointTimeout,
    EndpointUnavailable,
    StreamBroken,
)
from moa_local.metrics import Metrics
from moa_local.mixture.spec import Sampling
from moa_local.mixture.trace import AgentTrace
from tests.support.calls import MESSAGES, CallAnswer, Clock, call, chats, opened, until, value

if TYPE_CHECKING:
    from tests.support.fake_fixtures import FakeEngineFactory


async def test_fault_free_call_streams_the_answer(fake_engine: FakeEngineFactory) -> None:
    server = fake_engine(model="m", tokens=3)
    async with opened(server.base_url) as endpoint:
        answer, trace = await call(endpoint, Sampling(temperature=0.5, max_tokens=64))
    assert isinstance(answer, CallAnswer)
    assert answer.texts == ["m says: w1 w2 w3"]
    assert answer.finish_reasons == ["stop"]
    assert (trace.status, trace.attempts, trace.error) == ("ok", 1, None)
    assert (trace.prompt_tokens, trace.completion_tokens) == (2, 5)
    assert trace.ttft_s is not None and 0 < trace.ttft_s <= trace.latency_s
    body = server.chat_bodies()[0]
    assert body["model"] == "m" and body["messages"] == MESSAGES
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert (body["temperature"], body["max_tokens"]) == (0.5, 64)
    assert "n" not in body


async def test_fault_n_samples_in_one_request(fake_engine: FakeEngineFactory) -> None:
    server = fake_engine(model="m", template="sample {index}: {words}", tokens=2)
    async with opened(server.base_url) as endpoint:
        answer, trace = await call(endpoint, Sampling(n=3))
    assert isinstance(answer, CallAnswer)
    assert answer.texts == ["sample 0: w1 w2", "sample 1: w1 w2", "sample 2: w1 w2"]
    assert trace.finish_reasons == ["stop", "stop", "stop"]
    assert chats(server) == 1 and server.chat_bodies()[0]["n"] == 3


@pytest.mark.parametrize("status", [500, 503, 429])
async def test_fault_retried_until_it_succeeds(fake_engine: FakeEngineFactory, status: int) -> None:
    server = fake_engine(model="m", status=status, times=2, retry_after=0 if status == 429 else None)
    metrics = Metrics(CollectorRegistry())
    async with opened(server.base_url, metrics, max_retries=2) as endpoint:
        answer, trace = await call(endpoint)
    assert isinstance(answer, CallAnswer), answer
    assert (trace.status, trace.attempts) == ("ok", 3)
    assert chats(server) == 3
    assert value(metrics, "moa_agent_retries_total", endpoint="e") == 2


async def test_fault_retries_are_bounded(fake_engine: FakeEngineFactory) -> None:
    server = fake_engine(model="m", status=500, error_message="engine exploded")
    async with opened(server.base_url, max_retries=2) as endpoint:
        error, trace = await call(endpoint)
    assert isinstance(error, EndpointStatusError)
    assert (error.upstream_status, str(error)) == (500, "e: engine answered 500: engine exploded")
    assert (trace.status, trace.attempts, trace.error) == ("error", 3, "engine answered 500: engine exploded")
    assert chats(server) == 3


async def test_fault_no_retries_when_configured_off(fake_engine: FakeEngineFactory) -> None:
    server = fake_engine(model="m", status=502)
    async with opened(server.base_url, max_retries=0) as endpoint:
        error, trace = await call(endpoint)
    assert isinstance(error, EndpointStatusError) and trace.attempts == 1
    assert chats(server) == 1


async def test_fault_429_waits_for_retry_after(fake_engine: FakeEngineFactory) -> None:
    server = fake_engine(model="m", status=429, retry_after=0.3, times=1)
    async with opened(server.base_url) as endpoint:
        answer, trace = await call(endpoint)
    assert isinstance(answer, CallAnswer) and trace.attempts == 2
    first, second = (r.at for r in server.requests)
    assert second - first >= 0.29


async def test_fault_client_errors_are_not_retried(fake_engine: FakeEngineFactory) -> None:
    server = fake_engine(model="m", status=400, error_message="prompt too long")
    async with opened(server.base_url, max_retries=3) as endpoint:
        error, trace = await call(endpoint)
        assert not endpoint.breaker.is_open
    assert isinstance(error, EndpointStatusError) and error.upstream_status == 400
    assert str(error) == "e: engine answered 400: prompt too long"
    assert (trace.status, trace.attempts) == ("error", 1)
    assert chats(server) == 1


async def test_fault_connection_refused_bounded_attempts(fake_engine: FakeEngineFactory) -> None:
    server = fake_engine(model="m")
    server.stop()
    metrics = Metrics(CollectorRegistry())
    async with opened(server.base_url, metrics, max_retries=2) as endpoint:
        start = time.perf_counter()
        error, trace = await call(endpoint)
    assert isinstance(error, EndpointUnavailable)
    assert str(error) == "e: cannot connect to the engine (ConnectError)"
    assert (trace.status, trace.attempts) == ("error", 3)
    assert value(metrics, "moa_agent_retries_total", endpoint="e") == 2
    assert time.perf_counter() - start < 3.0  # jittered backoff, bounded


async def test_fault_cut_stream_is_not_retried(fake_engine: FakeEngineFactory) -> None:
    server = fake_engine(model="m", tokens=10, cut_after=3)
    received: list[str] = []
    trace = AgentTrace("e", "proposer")
    async with opened(server.base_url, max_retries=3) as endpoint:
        with pytest.raises(StreamBroken) as caught:
            async with aclosing(endpoint.stream(list(MESSAGES), Sampling(), trace)) as stream:
                async for _, text in stream:
                    received.append(text)
    assert received == ["m", " says:", " w1"]
    assert str(caught.value).startswith("e: the stream broke off (")
    assert (trace.status, trace.attempts) == ("error", 1)
    assert trace.completion_tokens == 3  # no usage came: the pieces streamed are counted
    assert chats(server) == 1  # never retried once a token went out
    assert server.wait_for_event("cut").chunks == 3


async def test_fault_hanging_engine_hits_the_call_timeout(fake_engine: FakeEngineFactory) -> None:
    server = fake_engine(model="m", hang=True)
    async with opened(server.base_url, timeout_s=1.0, max_retries=2) as endpoint:
        start = time.perf_counter()
        error, trace = await call(endpoint)
        elapsed = time.perf_counter() - start
    assert isinstance(error, EndpointTimeout)
    assert trace.status == "timeout" and trace.error is not None
    assert 0.99 <= elapsed < 3.0  # the timeout bounds the whole call, retries included
    assert server.wait_for_event("disconnect").stage == "hang"


async def test_fault_slow_stream_hits_the_call_timeout(fake_engine: FakeEngineFactory) -> None:
    server = fake_engine(model="m", tokens=40, token_delay_ms=100)
    async with opened(server.base_url, timeout_s=1.0) as endpoint:
        start = time.perf_counter()
        error, trace = await call(endpoint)
        elapsed = time.perf_counter() - start
    assert isinstance(error, EndpointTimeout)
    assert str(error) == "e: no complete answer within 1s"
    assert (trace.status, trace.attempts) == ("timeout", 1)
    assert trace.ttft_s is not None
    assert elapsed < 3.0
    assert server.wait_for_event("disconnect").stage == "stream"


async def test_fault_circuit_opens_skips_then_probes(fake_engine: FakeEngineFactory) -> None:
    server = fake_engine(model="m", status=500)
    clock = Clock()
    metrics = Metrics(CollectorRegistry())
    async with opened(server.base_url, metrics, max_retries=0) as endpoint:
        endpoint.breaker = CircuitBreaker(2, 10.0, clock)
        for _ in range(2):
            error, trace = await call(endpoint)
            assert isinstance(error, EndpointStatusError)
        assert endpoint.breaker.is_open
        assert value(metrics, "moa_circuit_open", endpoint="e") == 1

        clock.now = 4.0
        error, trace = await call(endpoint)  # skipped: nothing reaches the engine
        assert isinstance(error, EndpointUnavailable)
        assert re.fullmatch(r"e: circuit open after repeated failures; probing again in 6s", str(error))
        assert trace.status == "skipped" and trace.attempts == 0
        assert chats(server) == 2
        assert value(metrics, "moa_agent_calls_total", endpoint="e", role="proposer", outcome="skipped") == 1

        clock.now = 8.0
        assert isinstance((await call(endpoint))[0], EndpointUnavailable)  # still cooling down

        server.behavior.status = None  # the engine recovers
        clock.now = 10.0  # skipped calls do not extend the cool-down
        answer, trace = await call(endpoint)  # the probe
        assert isinstance(answer, CallAnswer) and trace.status == "ok"
        assert chats(server) == 3
        assert not endpoint.breaker.is_open
        assert value(metrics, "moa_circuit_open", endpoint="e") == 0


async def test_fault_failed_probe_reopens_the_circuit(fake_engine: FakeEngineFactory) -> None:
    server = fake_engine(model="m", status=500)
    clock = Clock()
    async with opened(server.base_url, max_retries=0) as endpoint:
        endpoint.breaker = CircuitBreaker(1, 10.0, clock)
        await call(endpoint)
        clock.now = 10.0
        error, trace = await call(endpoint)  # the probe, still failing
        assert isinstance(error, EndpointStatusError) and trace.status == "error"
        error, trace = await call(endpoint)
        assert trace.status == "skipped"
        assert chats(server) == 2
        clock.now = 20.0
        server.behavior.status = None
        assert isinstance((await call(endpoint))[0], CallAnswer)


async def test_fault_probe_answered_with_a_client_error_does_not_wedge_the_circuit(
    fake_engine: FakeEngineFactory,
) -> None:
    server = fake_engine(model="m", status=500)
    clock = Clock()
    async with opened(server.base_url, max_retries=0) as endpoint:
        endpoint.breaker = CircuitBreaker(1, 10.0, clock)
        await call(endpoint)
        clock.now = 10.0
        server.behavior.status = 400  # the probe's prompt is refused: says nothing about the engine's health
        error, trace = await call(endpoint)
        assert isinstance(error, EndpointStatusError) and trace.status == "error"
        server.behavior.status = None
        answer, trace = await call(endpoint)
        assert isinstance(answer, CallAnswer), answer
        assert not endpoint.breaker.is_open


async def test_fault_concurrency_limit_is_honoured(fake_engine: FakeEngineFactory) -> None:
    server = fake_engine(model="m", latency_ms=150, tokens=2)
    seen: list[int] = []
    queued: list[float] = []
    metrics = Metrics(CollectorRegistry())

    async def watch() -> None:
        while True:
            text = server.engine.metrics_text()
            found = re.search(r'^vllm:num_requests_running\{model_name="m"\} (\d+)$', text, re.M)
            assert found is not None
            seen.append(int(found.group(1)))
            queued.append(value(metrics, "moa_queued", endpoint="e"))
            await asyncio.sleep(0.005)

    async with opened(server.base_url, metrics, max_concurrency=2) as endpoint:
        watcher = asyncio.create_task(watch())
        start = time.perf_counter()
        results = await asyncio.gather(*(call(endpoint) for _ in range(6)))
        elapsed = time.perf_counter() - start
        watcher.cancel()
    assert all(isinstance(answer, CallAnswer) for answer, _ in results)
    assert max(seen) == 2
    assert max(queued) == 4 and value(metrics, "moa_queued", endpoint="e") == 0  # the other four waited in ours
    assert elapsed >= 3 * 0.15  # three waves of two
    assert chats(server) == 6


async def test_fault_closing_a_stream_closes_the_upstream_connection(fake_engine: FakeEngineFactory) -> None:
    server = fake_engine(model="m", tokens=50, token_delay_ms=30)
    trace = AgentTrace("e", "proposer")
    metrics = Metrics(CollectorRegistry())
    pieces = 0
    async with opened(server.base_url, metrics) as endpoint:
        async with aclosing(endpoint.stream(list(MESSAGES), Sampling(), trace)) as stream:
            async for _piece in stream:
                pieces += 1
                if pieces == 4:
                    break
        event = server.wait_for_event("disconnect")
        assert value(metrics, "moa_inflight", endpoint="e") == 0
    assert (event.stage, event.chunks < 50) == ("stream", True)
    assert trace.status == "cancelled"
    assert trace.completion_tokens == 4  # what it streamed before it was closed, also in the token counter
    assert value(metrics, "moa_tokens_total", endpoint="e", kind="completion") == 4
    assert value(metrics, "moa_agent_calls_total", endpoint="e", role="proposer", outcome="cancelled") == 1


async def test_fault_cancelling_a_waiting_call_closes_the_upstream_connection(fake_engine: FakeEngineFactory) -> None:
    server = fake_engine(model="m", hang=True)
    async with opened(server.base_url) as endpoint:
        task = asyncio.create_task(call(endpoint))
        await until(lambda: chats(server) == 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert server.wait_for_event("disconnect").stage == "hang"


async def test_fault_cancelled_probe_frees_the_probe_slot(fake_engine: FakeEngineFactory) -> None:
    server = fake_engine(model="m", status=500)
    clock = Clock()
    async with opened(server.base_url, max_retries=0) as endpoint:
        endpoint.breaker = CircuitBreaker(1, 10.0, clock)
        await call(endpoint)
        clock.now = 10.0
        server.set(status=None, hang=True)
        probe = asyncio.create_task(call(endpoint))
        await until(lambda: chats(server) == 2)
        probe.cancel()
        with pytest.raises(asyncio.CancelledError):
            await probe
        server.set(hang=False)
        assert isinstance((await call(endpoint))[0], CallAnswer)


async def test_fault_served_models(fake_engine: FakeEngineFactory) -> None:
    server = fake_engine(model=["m", "other"])
    async with opened(server.base_url) as endpoint:
        assert await endpoint.served_models() == ["m", "other"]
    server.stop()
    async with opened(server.base_url) as endpoint:
        with pytest.raises(EndpointUnavailable):
            await endpoint.served_models()


async def test_fault_latency_time_waiting_for_a_slot_does_not_count_against_the_call_timeout(
    fake_engine: FakeEngineFactory,
) -> None:
    """One slot, a 1 s call timeout, three calls of 0.4 s each (fake engine latency): the last waits 0.8 s."""
    server = fake_engine(model="m", latency_ms=400, tokens=2)
    async with opened(server.base_url, max_concurrency=1, timeout_s=1, max_retries=0) as endpoint:
        start = time.perf_counter()
        results = await asyncio.gather(*(call(endpoint) for _ in range(3)))
        elapsed = time.perf_counter() - start
    assert all(isinstance(answer, CallAnswer) for answer, _ in results), results
    assert elapsed >= 1.2  # one after another: the last call's wait and run exceed its 1 s timeout
    assert max(trace.latency_s for _, trace in results) >= 1.1  # its latency includes the wait
