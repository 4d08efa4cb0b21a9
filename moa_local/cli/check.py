"""`moa-local check`: does every endpoint answer, and serve the configured model?"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from moa_local.config import Config
from moa_local.engines.pool import EndpointPool
from moa_local.engines.prober import Prober
from moa_local.metrics import Metrics


async def check_endpoints(config: Config, echo: Callable[[str], None]) -> bool:
    """Probe all endpoints at once; print one line each and one per mixture. True when all are up."""
    metrics = Metrics()
    async with EndpointPool(config.endpoints, metrics) as pool:
        prober = Prober(config, pool, metrics)
        await asyncio.wait_for(prober.probe_once(), timeout=30)
    width = max(len(name) for name in config.endpoints)
    for name, endpoint in config.endpoints.items():
        if prober.up.get(name):
            echo(f"  {name:<{width}}  up    {endpoint.base_url} serves {endpoint.model}")
        else:
            echo(f"  {name:<{width}}  DOWN  {endpoint.base_url}: {prober.reasons.get(name) or 'no answer'}")
    for name, ready in prober.readiness().items():
        echo(f"  mixture {name}: {'can reach its quorum' if ready else 'CANNOT reach its quorum'}")
    return all(prober.up.get(name) for name in config.endpoints)
