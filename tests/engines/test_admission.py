"""Admission to an endpoint: the limit, oldest request first, and cancellation.

The last test runs the pipeline over the real endpoint pool against a fake
engine that injects latency (a fake on purpose: the order of arrivals at
the engine is what is checked).
"""

from __future__ import annotations

import asyncio
from contextlib import aclosing
from typing import TYPE_CHECKING

import pytest
from prometheus_client import CollectorRegistry

from moa_local.engines.admission import Admission
from moa_local.engines.pool import EndpointPool
from moa_local.metrics import Metrics
from moa_local.mixture.events import Done
from moa_local.mixture.pipeline import Pipeline
from moa_local.mixture.spec import Overrides, RunSpec
from tests.support.gateway_fixtures import fake_config, mixture

if TYPE_CHECKING:
    from tests.support.fake_fixtures import FakeEngineFactory


async def hold(admission: Admission, order: float, name: str, admitted: list[str], release: asyncio.Event) -> None:
    async with admission.slot(order):
        admitted.append(name)
        await release.wait()


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_no_more_than_the_limit_in_flight() -> None:
    admission, admitted, release = Admission(2), [], asyncio.Event()
    tasks = [asyncio.create_task(hold(admission, 0.0, str(i), admitted, release)) for i in range(5)]
    await settle()
    assert admitted == ["0", "1"] and admission.in_use == 2 and admission.queued == 3
    release.set()
    await asyncio.gather(*tasks)
    assert admitted == ["0", "1", "2", "3", "4"] and admission.in_use == 0 and admission.queued == 0


async def test_waiting_calls_are_admitted_oldest_request_first_ties_in_arrival_order() -> None:
    admission, admitted = Admission(1), []
    gates = {name: asyncio.Event() for name in ("first", "new", "old", "old-again", "older")}
    orders = {"first": 0.0, "new": 9.0, "old": 2.0, "old-again": 2.0, "older": 1.0}
    tasks = []
    for name in gates:  # arrive in this order while "first" holds the only slot
        tasks.append(asyncio.create_task(hold(admission, orders[name], name, admitted, gates[name])))
        await settle()
    assert admitted == ["first"]
    for name in ("first", "older", "old", "old-again", "new"):
        gates[name].set()
        await settle()
    await asyncio.gather(*tasks)
    assert admitted == ["first", "older", "old", "old-again", "new"]


async def test_a_call_cancelled_while_waiting_takes_no_slot() -> None:
    admission, admitted, release = Admission(1), [], asyncio.Event()
    holder = asyncio.create_task(hold(admission, 0.0, "holder", admitted, release))
    await settle()
    gone = asyncio.create_task(hold(admission, 1.0, "gone", admitted, release))
    after = asyncio.create_task(hold(admission, 2.0, "after", admitted, release))
    await settle()
    gone.cancel()
    await settle()
    assert admission.queued == 1
    release.set()
    await asyncio.gather(holder, after)
    assert gone.cancelled() and admitted == ["holder", "after"]
    assert admission.in_use == 0 and admission.queued == 0


async def test_a_call_cancelled_after_its_slot_was_granted_passes_the_slot_on() -> None:
    admission, admitted = Admission(1), []
    first, never = asyncio.Event(), asyncio.Event()
    holder = asyncio.create_task(hold(admission, 0.0, "holder", admitted, first))
    await settle()
    granted = asyncio.create_task(hold(admission, 1.0, "granted", admitted, never))
    last = asyncio.create_task(hold(admission, 2.0, "last", admitted, first))
    await settle()
    first.set()
    await asyncio.sleep(0)  # the holder leaves and hands its slot to "granted" ...
    granted.cancel()  # ... which is cancelled before it could run
    await asyncio.gather(holder, last, granted, return_exceptions=True)
    assert granted.cancelled() and admitted == ["holder", "last"]
    assert admission.in_use == 0 and admission.queued == 0


def test_a_limit_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Admission(0)


async def test_fault_latency_a_request_at_its_aggregator_goes_before_newer_requests(
    fake_engine: FakeEngineFactory,
) -> None:
    """One slot on the engine, three requests started in turn (fake engine: 150 ms per call).

    Calls admitted in arrival order would run every proposal first (A, B, C)
    and every aggregation after; oldest request first runs A's aggregation as
    soon as it is ready, ahead of C's proposal.
    """
    server = fake_engine(model="m", tokens=2, latency_ms=150)
    config = fake_config({"e": server}, {"mix": mixture(["e"], "e")}, max_concurrency=1)
    spec = RunSpec.for_mixture("mix", config.mixtures["mix"], Overrides(max_tokens=8))
    metrics = Metrics(CollectorRegistry())
    async with EndpointPool(config.endpoints, metrics) as pool:
        pipeline = Pipeline(pool, metrics)

        async def ask(question: str) -> str:
            async with aclosing(pipeline.run(spec, [{"role": "user", "content": question}])) as run:
                async for event in run:
                    if isinstance(event, Done):
                        return event.answer
            raise AssertionError("no answer")

        tasks = []
        for question in ("A", "B", "C"):
            tasks.append(asyncio.create_task(ask(question)))
            await asyncio.sleep(0.03)
        answers = await asyncio.gather(*tasks)
    assert all(answers)
    arrivals = []
    for body in server.chat_bodies():
        question = body["messages"][-1]["content"]
        role = "aggregator" if body["messages"][0]["role"] == "system" else "proposer"
        arrivals.append(f"{question} {role}")
    assert arrivals == [
        "A proposer", "B proposer", "A aggregator", "B aggregator", "C proposer", "C aggregator",
    ]  # fmt: skip
