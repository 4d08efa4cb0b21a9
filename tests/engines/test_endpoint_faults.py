"""More fault injection against one endpoint over loopback (the circuit and the queue; see test_pool_faults.py)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry

from moa_local.engines.breaker import CircuitBreaker
from moa_local.errors import EndpointUnavailable
from moa_local.metrics import Metrics
from tests.support.calls import Clock, call, chats, opened, until, value

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
