"""More fault injection against endpoints over loopback: the circuit and the queue, and how a cut-off call is counted.

The first part is test_pool_faults.py.
"""

from __future__ import annotations

import asyncio
from contextlib import aclosing
from typing import TYPE_CHECKING

import pytest
from prometheus_client import CollectorRegistry

from moa_local.engines.breaker import CircuitBreaker
from moa_local.engines.pool import EndpointPool
from moa_local.errors import DeadlineError, EndpointUnavailable
from moa_local.metrics import Metrics
from moa_local.mixture.pipeline import Pipeline
from moa_local.mixture.spec import RunSpec
from tests.support.calls import MESSAGES, Clock, call, chats, opened, until, value
from tests.support.gateway_fixtures import fake_config, mixture

if TYPE_CHECKING:
    from tests.support.fake_fixtures import FakeEngineFactory


async def test_fault_calls_queued_behind_a_dying_engine_are_skipped_once_admitted(
    fake_engine: FakeEngineFactory,
) -> None:
    """One slot: a call hangs on the engine, three wait behind it; the engine dies and its call opens the circuit."""
    server = fake_engine(model="m", hang=True)
    metrics = Metrics(CollectorRegistry())
    async with opened(server.base_url, metrics, max_concurrency=1, max_retries=2) as endpoint:
        endpoint.breaker = CircuitBreaker(1, 10.0, Clock())
        first = asyncio.create_task(call(endpoint))
        await until(lambda: chats(server) == 1)
        queued = [asyncio.create_task(call(endpoint)) for _ in range(3)]
        await until(lambda: endpoint.admission.queued == 3)
        await asyncio.to_thread(server.stop)
        error, trace = await first
        assert trace.status == "error" and endpoint.breaker.is_open, (error, trace)
        results = await asyncio.gather(*queued)
    for error, trace in results:  # admitted after the circuit opened: never sent, and no retries
        assert isinstance(error, EndpointUnavailable) and "circuit open" in str(error), error
        assert (trace.status, trace.attempts) == ("skipped", 0)
    assert value(metrics, "moa_agent_calls_total", endpoint="e", role="proposer", outcome="skipped") == 3
    assert value(metrics, "moa_agent_calls_total", endpoint="e", role="proposer", outcome="error") == 1
    assert value(metrics, "moa_agent_retries_total", endpoint="e") == 0
    assert value(metrics, "moa_queued", endpoint="e") == 0 and value(metrics, "moa_inflight", endpoint="e") == 0


async def test_fault_an_aggregator_cut_off_by_the_request_cap_is_counted_as_a_timeout(
    fake_engine: FakeEngineFactory,
) -> None:
    p, a = fake_engine(model="p", tokens=2), fake_engine(model="a", hang=True)
    config = fake_config({"p": p, "a": a}, {"mix": mixture(["p"], "a", timeout_s=0.5)})
    metrics = Metrics(CollectorRegistry())
    async with EndpointPool(config.endpoints, metrics) as pool:
        run = Pipeline(pool, metrics).run(RunSpec.for_mixture("mix", config.mixtures["mix"]), MESSAGES)
        with pytest.raises(DeadlineError):
            async with aclosing(run):
                async for _ in run:
                    pass
        await asyncio.to_thread(a.wait_for_event, "disconnect")  # the engine's request was closed
    assert value(metrics, "moa_agent_calls_total", endpoint="a", role="aggregator", outcome="timeout") == 1
    assert value(metrics, "moa_agent_calls_total", endpoint="a", role="aggregator", outcome="cancelled") == 0
    assert value(metrics, "moa_requests_total", mixture="mix", outcome="timeout") == 1
