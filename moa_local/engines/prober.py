"""Periodic health probes of every endpoint, for `/ready` and `moa_endpoint_up`.

A probe lists the engine's models (`GET /v1/models`, 5 s timeout): the
endpoint is up when it answers and serves the configured model name. A
mixture is ready when its aggregator is up and every layer can still reach
its quorum with the endpoints that are up. A probe that fails with an
unexpected error marks its endpoint down with that error as the reason,
and the probe loop goes on. `probe_endpoints` probes a config once, for
`moa-local check`; printing its result is the command's business.
"""

from __future__ import annotations

import asyncio
import logging

from moa_local.config import Config, MixtureConfig
from moa_local.engines.pool import Endpoint, EndpointPool
from moa_local.errors import BackendError, MoaError
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
        endpoints = list(self.pool)
        results = await asyncio.gather(*(self._probe(endpoint) for endpoint in endpoints), return_exceptions=True)
        for endpoint, result in zip(endpoints, results, strict=True):
            if isinstance(result, BaseException):  # a bug, not an engine's answer: down, and why
                logger.error("the health probe of endpoint %s failed", endpoint.name, exc_info=result)
                self._record(endpoint.name, False, f"the health probe failed: {type(result).__name__}: {result}")

    async def _probe(self, endpoint: Endpoint) -> None:
        try:
            served = await endpoint.served_models()
        except BackendError as exc:
            up, reason = False, exc.reason
        else:
            up = endpoint.config.model in served
            reason = "" if up else f"serves {', '.join(served) or 'nothing'}, not {endpoint.config.model}"
        self._record(endpoint.name, up, reason)

    def _record(self, name: str, up: bool, reason: str) -> None:
        if self.up.get(name) != up:
            logger.info("endpoint %s is %s%s", name, "up" if up else "down", f": {reason}" if reason else "")
        self.up[name] = up
        self.reasons[name] = reason
        self.metrics.set_endpoint_up(name, up)

    async def run(self, interval_s: float) -> None:
        """Probe every `interval_s` until cancelled; a round that fails is logged and the next one runs.

        Nothing else ends the loop: a dead prober would freeze `/ready` and
        `moa_endpoint_up` at their last values, silently.
        """
        while True:
            try:
                await self.probe_once()
            except Exception:
                logger.exception("a health probe round failed; the next one runs in %gs", interval_s)
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


async def probe_endpoints(config: Config, *, timeout_s: float = 30.0) -> Prober:
    """Probe every endpoint of `config` once, all at once, over a pool opened for the call.

    The returned prober holds the outcome (`up`, `reasons`, `readiness()`). A MoaError when the
    probes together take longer than `timeout_s`, naming the endpoints that had not answered.
    """
    metrics = Metrics()
    async with EndpointPool(config.endpoints, metrics) as pool:
        prober = Prober(config, pool, metrics)
        try:
            await asyncio.wait_for(prober.probe_once(), timeout=timeout_s)
        except TimeoutError:
            silent = ", ".join(name for name in config.endpoints if name not in prober.up)
            detail = f" (no answer from {silent})" if silent else ""
            raise MoaError(f"the endpoint probes took longer than {timeout_s:g} s{detail}") from None
    return prober
