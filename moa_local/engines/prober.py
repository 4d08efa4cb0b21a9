"""Periodic health probes of every endpoint, for `/ready` and `moa_endpoint_up`.

A probe lists the engine's models (`GET /v1/models`, 5 s timeout): the
endpoint is up when it answers and serves the configured model name. A
mixture is ready when its aggregator is up and every layer can still reach
its quorum with the endpoints that are up.
"""

from __future__ import annotations

import asyncio
import logging

from moa_local.config import Config, MixtureConfig
from moa_local.engines.pool import Endpoint, EndpointPool
from moa_local.errors import BackendError
from moa_local.metrics import Metrics

logger = logging.getLogger("moa_local.prober")


class Prober:
    def __init__(self, config: Config, pool: EndpointPool, metrics: Metrics) -> None:
        self.config = config
        self.pool = pool
        self.metrics = metrics
        self.up: dict[str, bool] = {}
        self.reasons: dict[str, str] = {}

    async def probe_once(self) -> None:
        await asyncio.gather(*(self._probe(endpoint) for endpoint in self.pool))

    async def _probe(self, endpoint: Endpoint) -> None:
        try:
            served = await endpoint.served_models()
        except BackendError as exc:
            up, reason = False, exc.reason
        else:
            up = endpoint.config.model in served
            reason = "" if up else f"serves {', '.join(served) or 'nothing'}, not {endpoint.config.model}"
        if self.up.get(endpoint.name) != up:
            logger.info("endpoint %s is %s%s", endpoint.name, "up" if up else "down", f": {reason}" if reason else "")
        self.up[endpoint.name] = up
        self.reasons[endpoint.name] = reason
        self.metrics.set_endpoint_up(endpoint.name, up)

    async def run(self, interval_s: float) -> None:
        while True:
            await self.probe_once()
            await asyncio.sleep(interval_s)

    def mixture_ready(self, mixture: MixtureConfig) -> bool:
        if not self.up.get(mixture.aggregator.endpoint, False):
            return False
        return all(
            sum(agent.n for agent in layer.agents if self.up.get(agent.endpoint, False)) >= layer.min_ok
            for layer in mixture.layers
        )

    def readiness(self) -> dict[str, bool]:
        return {name: self.mixture_ready(mixture) for name, mixture in self.config.mixtures.items()}
