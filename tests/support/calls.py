"""Engine calls for tests: one `Endpoint` call gathered whole, and an endpoint opened on a fake engine.

The gateway never needs a whole answer from an endpoint (it streams), so
`complete` lives with the tests rather than in `moa_local/engines/`. The
rest are the small tools of the endpoint fault tests: an endpoint over a
fake engine, one call that returns its error instead of raising, a clock
to hand a circuit breaker, bounded polling, and metric values.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry

from moa_local.config import EndpointConfig
from moa_local.engines.endpoint import Endpoint
from moa_local.engines.pool import EndpointPool
from moa_local.errors import BackendError
from moa_local.metrics import Metrics
from moa_local.mixture.spec import Sampling
from moa_local.mixture.trace import AgentTrace

if TYPE_CHECKING:
    from tests.support.fake_fixtures import FakeServer

MESSAGES: list[dict[str, Any]] = [{"role": "user", "content": "say something"}]


@dataclass
class CallAnswer:
    texts: list[str]
    finish_reasons: list[str | None]


async def complete(
    endpoint: Endpoint, messages: list[dict[str, Any]], sampling: Sampling, trace: AgentTrace
) -> CallAnswer:
    """Stream one call to `endpoint` and join each choice's text; `trace` is filled as for any call."""
    parts: list[list[str]] = [[] for _ in range(sampling.n)]
    async for index, delta in endpoint.stream(messages, sampling, trace):
        if index < len(parts):
            parts[index].append(delta)
    return CallAnswer(["".join(p) for p in parts], list(trace.finish_reasons))


class Clock:
    """A clock for a circuit breaker that moves only when told: `clock.now = 10.0`."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@asynccontextmanager
async def opened(url: str, metrics: Metrics | None = None, **settings: Any) -> AsyncIterator[Endpoint]:
    """One pooled endpoint named 'e' for the fake's model 'm'; quick defaults for tests."""
    config = EndpointConfig.model_validate({"base_url": url, "model": "m", "timeout_s": 5, **settings})
    async with EndpointPool({"e": config}, metrics or Metrics(CollectorRegistry())) as pool:
        yield pool["e"]


async def call(endpoint: Endpoint, sampling: Sampling | None = None) -> tuple[CallAnswer | BackendError, AgentTrace]:
    """One call with MESSAGES: its answer or its error, and its trace."""
    sampling = sampling or Sampling()
    trace = AgentTrace(endpoint.name, "proposer", samples=sampling.n)
    try:
        return await complete(endpoint, list(MESSAGES), sampling, trace), trace
    except BackendError as exc:
        return exc, trace


def chats(server: FakeServer) -> int:
    return len(server.chat_bodies())


async def until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Wait (polling) until `condition()` holds; fail after `timeout_s`."""
    for _ in range(int(timeout_s / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"not within {timeout_s}s")


def value(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0
