"""Admission to an endpoint: the limit, oldest request first, interactive before batch, and cancellation.

The `test_fault_` tests run the pipeline over the real endpoint pool
against a fake engine that injects latency or hangs (a fake on purpose:
the order of arrivals at the engine is what is checked).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from contextlib import aclosing
from dataclasses import replace
from typing import TYPE_CHECKING

import pytest
from prometheus_client import CollectorRegistry

from moa_local.config import parse_config
from moa_local.engines.admission import Admission
from moa_local.engines.pool import EndpointPool
from moa_local.errors import ConfigError
from moa_local.metrics import Metrics
from moa_local.mixture.events import Done
from moa_local.mixture.pipeline import Pipeline
from moa_local.mixture.spec import Overrides, Priority, RunSpec
from tests.support.gateway_fixtures import fake_config, mixture

if TYPE_CHECKING:
    from tests.support.fake_fixtures import FakeEngineFactory, FakeServer


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


async def hold_as(
    admission: Admission, priority: Priority, order: float, name: str, admitted: list[str], release: asyncio.Event
) -> None:
    async with admission.slot(order, priority):
        admitted.append(name)
        await release.wait()


async def test_waiting_interactive_calls_are_admitted_before_waiting_batch_calls() -> None:
    admission, admitted = Admission(1), []
    arrivals: list[tuple[str, Priority, float]] = [
        ("holder", "batch", 0.0), ("batch-old", "batch", 1.0), ("batch-older", "batch", 0.5),
        ("chat-new", "interactive", 9.0), ("chat", "interactive", 5.0),
    ]  # fmt: skip
    gates = {name: asyncio.Event() for name, _, _ in arrivals}
    tasks = []
    for name, priority, order in arrivals:  # in this order, while "holder" has the only slot
        tasks.append(asyncio.create_task(hold_as(admission, priority, order, name, admitted, gates[name])))
        await settle()
    assert admitted == ["holder"]
    assert (admission.queued_of("interactive"), admission.queued_of("batch")) == (2, 2)
    for name in ("holder", "chat", "chat-new", "batch-older", "batch-old"):
        gates[name].set()
        await settle()
    await asyncio.gather(*tasks)
    assert admitted == ["holder", "chat", "chat-new", "batch-older", "batch-old"]


async def test_batch_calls_hold_at_most_their_share_and_interactive_calls_take_the_rest() -> None:
    admission, admitted, release = Admission(4, batch_share=0.5), [], asyncio.Event()
    assert admission.batch_limit == 2
    batch = [asyncio.create_task(hold_as(admission, "batch", i, f"b{i}", admitted, release)) for i in range(4)]
    await settle()
    assert admitted == ["b0", "b1"] and admission.queued_of("batch") == 2 and admission.in_use == 2
    chats = [asyncio.create_task(hold_as(admission, "interactive", 9, f"i{i}", admitted, release)) for i in range(2)]
    await settle()
    assert admitted == ["b0", "b1", "i0", "i1"] and admission.in_use == 4 and admission.queued_of("batch") == 2
    release.set()
    await asyncio.gather(*batch, *chats)
    assert admitted[4:] == ["b2", "b3"] and admission.in_use == admission.batch_in_use == 0


async def test_a_freed_batch_slot_goes_to_a_waiting_batch_call_only_under_the_cap() -> None:
    admission, admitted = Admission(2, batch_share=0.5), []
    gates = {name: asyncio.Event() for name in ("chat", "b0", "b1")}
    chat = asyncio.create_task(hold_as(admission, "interactive", 0, "chat", admitted, gates["chat"]))
    b0 = asyncio.create_task(hold_as(admission, "batch", 1, "b0", admitted, gates["b0"]))
    b1 = asyncio.create_task(hold_as(admission, "batch", 2, "b1", admitted, gates["b1"]))
    await settle()
    assert admitted == ["chat", "b0"]
    gates["chat"].set()  # a free slot, but the one batch slot is taken: b1 still waits
    await settle()
    assert admitted == ["chat", "b0"] and admission.in_use == 1 and admission.queued_of("batch") == 1
    gates["b0"].set()
    await settle()
    assert admitted == ["chat", "b0", "b1"]
    gates["b1"].set()
    await asyncio.gather(chat, b0, b1)
    assert admission.in_use == admission.batch_in_use == 0


async def test_a_batch_call_cancelled_after_its_slot_was_granted_frees_its_batch_slot() -> None:
    admission, admitted = Admission(1), []
    first, never = asyncio.Event(), asyncio.Event()
    holder = asyncio.create_task(hold_as(admission, "batch", 0, "holder", admitted, first))
    await settle()
    granted = asyncio.create_task(hold_as(admission, "batch", 1, "granted", admitted, never))
    last = asyncio.create_task(hold_as(admission, "batch", 2, "last", admitted, first))
    await settle()
    first.set()
    await asyncio.sleep(0)  # the holder leaves and hands its slot to "granted" ...
    granted.cancel()  # ... which is cancelled before it could run
    await asyncio.gather(holder, last, granted, return_exceptions=True)
    assert granted.cancelled() and admitted == ["holder", "last"]
    assert admission.in_use == admission.batch_in_use == admission.queued == 0


def test_the_batch_share_keeps_at_least_one_slot_and_must_be_a_share() -> None:
    assert [Admission(limit, share).batch_limit for limit, share in ((1, 0.5), (10, 0.25), (8, 1.0))] == [1, 2, 8]
    for share in (0.0, 1.5):
        with pytest.raises(ValueError, match="batch share"):
            Admission(4, share)


def _prompts(server: FakeServer) -> list[str]:
    return [body["messages"][-1]["content"] for body in server.chat_bodies()]


async def _until(condition: Callable[[], bool], what: str, timeout_s: float = 10.0) -> None:
    """Poll until `condition` holds (bounded), yielding to the loop in between."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def test_fault_hang_interactive_requests_reach_a_saturated_engine_before_waiting_batch_calls(
    fake_engine: FakeEngineFactory,
) -> None:
    """Two slots held by batch calls the fake engine never answers; each slot freed goes to a chat first.

    The fake hangs every call until its client leaves, so the only slots
    that free are the ones this test frees (by cancelling a request): the
    order in which requests reach the engine is the admission order.
    """
    server = fake_engine(model="m", hang=True)
    config = fake_config({"e": server}, max_concurrency=2)
    metrics = Metrics(CollectorRegistry())
    metrics.enable_batches()
    async with EndpointPool(config.endpoints, metrics, batch_share=1.0) as pool:
        pipeline, admission = Pipeline(pool, metrics), pool["e"].admission
        runs: dict[str, asyncio.Task[None]] = {}

        async def start(name: str, priority: Priority) -> None:
            spec = replace(RunSpec.passthrough("e", Overrides(), 30.0), priority=priority)

            async def ask() -> None:
                async with aclosing(pipeline.run(spec, [{"role": "user", "content": name}])) as run:
                    async for _ in run:
                        pass

            runs[name] = asyncio.create_task(ask())
            await asyncio.sleep(0.01)  # distinct request starts, so "oldest first" is well defined

        for name in ("b0", "b1", "b2", "b3"):
            await start(name, "batch")
        await _until(lambda: len(server.chat_bodies()) == 2 and admission.queued_of("batch") == 2, "2 + 2 batch")
        assert metrics.registry.get_sample_value("moa_batch_queued", {"endpoint": "e"}) == 2
        for name in ("i0", "i1"):
            await start(name, "interactive")
        await _until(lambda: admission.queued_of("interactive") == 2, "two queued chats")
        for freed, arrived in (("b0", "i0"), ("b1", "i1"), ("i0", "b2"), ("i1", "b3")):
            runs[freed].cancel()
            await _until(lambda arrived=arrived: _prompts(server)[-1:] == [arrived], f"{arrived} at the engine")
        assert _prompts(server) == ["b0", "b1", "i0", "i1", "b2", "b3"]
        for task in runs.values():
            task.cancel()
        await asyncio.gather(*runs.values(), return_exceptions=True)


async def test_fault_hang_batch_calls_keep_to_their_share_of_an_endpoint(fake_engine: FakeEngineFactory) -> None:
    server = fake_engine(model="m", hang=True)
    config = fake_config({"e": server}, gateway={"batch_share": 0.5}, max_concurrency=4)
    metrics = Metrics(CollectorRegistry())
    async with EndpointPool(config.endpoints, metrics, batch_share=config.gateway.batch_share) as pool:
        pipeline, admission = Pipeline(pool, metrics), pool["e"].admission

        async def ask(name: str, priority: Priority) -> None:
            spec = replace(RunSpec.passthrough("e", Overrides(), 30.0), priority=priority)
            async with aclosing(pipeline.run(spec, [{"role": "user", "content": name}])) as run:
                async for _ in run:
                    pass

        runs = [asyncio.create_task(ask(f"b{i}", "batch")) for i in range(4)]
        await _until(lambda: len(server.chat_bodies()) == 2 and admission.queued_of("batch") == 2, "2 + 2 batch")
        assert admission.in_use == admission.batch_in_use == 2  # two slots free, kept for chats
        runs.append(asyncio.create_task(ask("chat", "interactive")))
        await _until(lambda: len(server.chat_bodies()) == 3, "the chat at the engine")
        assert _prompts(server)[2] == "chat" and admission.queued_of("batch") == 2
        for task in runs:
            task.cancel()
        await asyncio.gather(*runs, return_exceptions=True)


@pytest.mark.parametrize("share", [0, 1.5, "half"])
def test_gateway_batch_share_outside_zero_to_one_is_refused_with_its_key_path(share: object) -> None:
    raw = {"endpoints": {"e": {"base_url": "http://127.0.0.1:9/v1", "model": "m"}}, "gateway": {"batch_share": share}}
    with pytest.raises(ConfigError, match=r"^<test>: gateway\.batch_share: "):
        parse_config(json.dumps(raw), "<test>")
    assert parse_config(json.dumps({**raw, "gateway": {}}), "<test>").gateway.batch_share == 0.5
