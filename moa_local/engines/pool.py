"""The endpoint pool: one `Endpoint` per configured engine, and the `Caller` it offers the pipeline.

`EndpointPool` opens every endpoint on entry and closes them all on exit;
its `stream` and `context_window` are the `Caller` protocol of
`mixture/pipeline.py`. What one call does (admission, breaker, retries,
timeouts, trace and metrics) is `endpoint.py`'s.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Mapping
from types import TracebackType
from typing import Any

from moa_local.config import DEFAULT_BATCH_SHARE, EndpointConfig
from moa_local.engines.endpoint import Endpoint
from moa_local.metrics import Metrics
from moa_local.mixture.spec import Priority, Sampling
from moa_local.mixture.trace import AgentTrace

__all__ = ["Endpoint", "EndpointPool"]  # Endpoint: what the pool hands out by name


class EndpointPool:
    """Opens one `Endpoint` per configured engine; closes them all on exit."""

    def __init__(
        self, endpoints: Mapping[str, EndpointConfig], metrics: Metrics, *, batch_share: float = DEFAULT_BATCH_SHARE
    ) -> None:
        self._configs = dict(endpoints)
        self._metrics = metrics
        self._batch_share = batch_share  # of each endpoint's max_concurrency that batch calls may hold
        self._endpoints: dict[str, Endpoint] = {}

    async def __aenter__(self) -> EndpointPool:
        self._endpoints = {
            name: Endpoint(name, cfg, self._metrics, batch_share=self._batch_share)
            for name, cfg in self._configs.items()
        }
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await asyncio.gather(*(endpoint.close() for endpoint in self._endpoints.values()))
        self._endpoints = {}

    def __getitem__(self, name: str) -> Endpoint:
        return self._endpoints[name]

    def stream(
        self, endpoint: str, messages: list[dict[str, Any]], sampling: Sampling, trace: AgentTrace, order: float = 0.0,
        priority: Priority = "interactive",
    ) -> AsyncGenerator[tuple[int, str], None]:  # fmt: skip
        return self._endpoints[endpoint].stream(messages, sampling, trace, order, priority)

    def context_window(self, endpoint: str) -> int | None:
        return self._configs[endpoint].context_window

    def __iter__(self) -> Any:
        return iter(self._endpoints.values())
