"""The health prober's loop under unexpected errors, over plain fake endpoints (no I/O)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, suppress
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from moa_local.engines.prober import Prober
from moa_local.metrics import Metrics
from tests.support.calls import until, value
from tests.support.metrics_configs import small_config


class FakeEndpoint:
    """Answers a probe with its model, or raises `error` (an unexpected one, not an engine's answer)."""

    def __init__(self, name: str, error: Exception | None = None) -> None:
        self.name = name
        self.config = SimpleNamespace(model=name)
        self.error = error

    async def served_models(self) -> list[str]:
        if self.error is not None:
            raise self.error
        return [self.name]


class FakePool(list[FakeEndpoint]):
    """The endpoints; its first `broken` iterations fail (a round that fails as a whole)."""

    broken = 0

    def __iter__(self) -> Iterator[FakeEndpoint]:
        if self.broken:
            self.broken -= 1
            raise RuntimeError("no endpoints to iterate")
        return super().__iter__()


@asynccontextmanager
async def probing(
    pool: FakePool, metrics: Metrics, broken: int = 0
) -> AsyncIterator[tuple[Prober, asyncio.Task[None]]]:
    prober = Prober(small_config([e.name for e in pool], {}), pool, metrics)  # type: ignore[arg-type]
    pool.broken = broken
    task = asyncio.create_task(prober.run(0.01))
    try:
        yield prober, task
    finally:
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task


def up(prober: Prober, **expected: bool) -> Any:
    return lambda: all(prober.up.get(name) is state for name, state in expected.items())


async def test_fault_an_unexpected_probe_error_marks_the_endpoint_down_and_the_loop_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bad = FakeEndpoint("b", RuntimeError("probe bug"))
    metrics = Metrics(CollectorRegistry())
    with caplog.at_level(logging.ERROR, logger="moa_local.prober"):
        async with probing(FakePool([FakeEndpoint("a"), bad]), metrics) as (prober, task):
            await until(up(prober, a=True, b=False))
            assert prober.reasons["b"] == "the health probe failed: RuntimeError: probe bug"
            assert value(metrics, "moa_endpoint_up", endpoint="b") == 0
            assert value(metrics, "moa_endpoint_up", endpoint="a") == 1
            assert "the health probe of endpoint b failed" in caplog.text and "probe bug" in caplog.text
            bad.error = None  # the next rounds still run: b comes back
            await until(up(prober, b=True))
            assert value(metrics, "moa_endpoint_up", endpoint="b") == 1
            assert not task.done()


async def test_fault_a_round_that_fails_as_a_whole_is_logged_and_the_next_one_runs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.ERROR, logger="moa_local.prober"):
        async with probing(FakePool([FakeEndpoint("a")]), Metrics(CollectorRegistry()), broken=2) as (prober, task):
            await until(up(prober, a=True))
            assert not task.done()
    assert caplog.text.count("a health probe round failed") == 2
