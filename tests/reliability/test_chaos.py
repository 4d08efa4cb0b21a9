"""Chaos: engines as separate processes, killed with SIGKILL, restarted, slow, failing or speaking garbage.

The fake engines here are processes (`tests/support/engine_processes.py`),
so a kill is a real one: connections reset, the port refuses. The gateway
runs on a thread, to read its metrics. A proposer of three dying in the
middle of a run (quorum 2) fails no request; its circuit opens, and closes
again once it is back, after which it gets calls again. A dead aggregator
is a 502/503 naming it, at once rather than after its call timeout (the
client's own timeout is far shorter than that). Every other fault, on a
proposer or on the aggregator, ends in a degraded answer or the right
status, never a hang. Latency figures are the script's
(`bench/reliability/chaos.py`), not these tests'.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from moa_local.bench.client import Target
from moa_local.bench.stats import RequestRecord
from tests.support.engine_faults import AGGREGATOR, PROPOSER_STATUS, apply, three_proposers
from tests.support.engine_processes import EngineProcess, processes
from tests.support.gateway_fixtures import GatewayFactory, GatewayServer
from tests.support.traffic import client, closed_loop, failures, process_config, until

NAMES = ("p1", "p2", "p3", "agg")
HELLO = [{"role": "user", "content": "hello"}]
CLIENT_TIMEOUT_S = 15.0  # far below the engines' call timeout: a wait for that timeout would fail the test


@pytest.fixture(scope="module")
def engines() -> Iterator[dict[str, EngineProcess]]:
    started = dict(zip(NAMES, processes(f"{name}-model" for name in NAMES), strict=True))
    yield started
    for engine in started.values():
        engine.stop()


@pytest.fixture
def fresh(engines: dict[str, EngineProcess]) -> dict[str, EngineProcess]:
    """The engines, each alive and back to its default behavior."""
    for engine in engines.values():
        if not engine.alive:
            engine.start()
        engine.reset()
    return engines


def chat(gw: GatewayServer, model: str = "mix", **fields: Any) -> httpx.Response:
    body = {"model": model, "messages": HELLO, "moa": {"trace": True}, **fields}
    return gw.http.post("/v1/chat/completions", json=body, timeout=CLIENT_TIMEOUT_S)


async def sending_until(
    http: httpx.AsyncClient, target: Target, check: Callable[[], bool], timeout_s: float, what: str
) -> list[RequestRecord]:
    """Send one request after another until `check()` holds; their records. AssertionError after `timeout_s`."""
    records: list[RequestRecord] = []
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not true within {timeout_s:g} s")
        records += await closed_loop(http, target, 1, 1)
        await asyncio.sleep(0.02)
    return records


async def test_fault_sigkill_a_proposer_of_three_mid_run_fails_no_request_and_its_circuit_recovers(
    fresh: dict[str, EngineProcess], gateway_server: GatewayFactory
) -> None:
    circuit = {"failures": 3, "cooldown_s": 1.0}
    gw = gateway_server(process_config(fresh, {"mix": three_proposers()}, max_retries=1, timeout_s=30, circuit=circuit))
    p2 = fresh["p2"]
    target = Target(gw.url, "mix", max_tokens=16, trace=False, timeout_s=CLIENT_TIMEOUT_S)
    records: list[RequestRecord] = []

    def circuit_open() -> bool:
        return gw.metric("moa_circuit_open", endpoint="p2") == 1

    async with client(16) as http:
        run = asyncio.ensure_future(closed_loop(http, target, 300, 16, records))
        await until(lambda: len(records) >= 60 or run.done(), 60, "60 requests answered")
        assert not run.done(), "the run ended before the kill"
        p2.kill()
        await until(lambda: circuit_open() or run.done(), 30, "p2's circuit open")
        await run
        assert circuit_open(), "p2's circuit did not open during the run"
        p2.start()  # a new process on the same port: it has received nothing yet
        later = await sending_until(http, target, lambda: not circuit_open(), 30, "p2's circuit closed again")
        later += await closed_loop(http, target, 10, 2)
    assert len(records) == 300
    assert failures(records) == [] and failures(later) == []
    assert p2.chat_requests() > 0, "the restarted proposer got no calls"
    assert gw.metric("moa_agent_calls_total", endpoint="p2", role="proposer", outcome="skipped") > 0


def test_fault_sigkill_the_aggregator_fails_fast_with_a_502_naming_it(
    fresh: dict[str, EngineProcess], gateway_server: GatewayFactory
) -> None:
    # Call timeouts of 120 s: a request that waited for one would hit the client's 15 s first.
    gw = gateway_server(process_config(fresh, {"mix": three_proposers(timeout_s=300)}, timeout_s=120))
    fresh["agg"].kill()
    for model in ("mix", "agg", "mix", "agg", "mix"):  # the later ones meet an open circuit
        for stream in (False, True):
            response = chat(gw, model, stream=stream)
            assert response.status_code in (502, 503), response.text
            error = response.json()["error"]
            assert "agg" in error["message"] and error["code"] in ("backend_unavailable", "backend_failed")
    assert gw.metric("moa_agent_calls_total", endpoint="agg", role="aggregator", outcome="error") > 0


PROPOSER_KNOWN: dict[str, pytest.MarkDecorator] = {}  # faults with a known defect: none now
AGGREGATOR_KNOWN: dict[str, pytest.MarkDecorator] = {}


@pytest.fixture
def faulty(fresh: dict[str, EngineProcess], gateway_server: GatewayFactory) -> GatewayServer:
    """A gateway whose layer waits 1 s and whose requests are capped at 3 s; circuits never open."""
    mixtures = {"mix": three_proposers(deadline_s=1.0, timeout_s=3.0)}
    config = process_config(fresh, mixtures, max_retries=1, timeout_s=10, circuit={"failures": 1000})
    return gateway_server(config)


@pytest.mark.parametrize("fault", [pytest.param(f, marks=PROPOSER_KNOWN.get(f, ())) for f in sorted(AGGREGATOR)])
def test_fault_a_faulty_proposer_is_left_out_of_the_answer(
    fresh: dict[str, EngineProcess], faulty: GatewayServer, fault: str
) -> None:
    apply(fresh["p2"], fault)
    response = chat(faulty)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["choices"][0]["message"]["content"].startswith("agg-model says:")
    agents = {a["endpoint"]: a for a in answer["moa"]["layers"][0]["agents"]}
    assert agents["p2"]["status"] == PROPOSER_STATUS.get(fault, "error"), agents["p2"]
    assert agents["p1"]["status"] == agents["p3"]["status"] == "ok"


@pytest.mark.parametrize("fault", [pytest.param(f, marks=AGGREGATOR_KNOWN.get(f, ())) for f in sorted(AGGREGATOR)])
def test_fault_a_faulty_aggregator_gets_the_right_status(
    fresh: dict[str, EngineProcess], faulty: GatewayServer, fault: str
) -> None:
    apply(fresh["agg"], fault)
    response = chat(faulty)
    status, code = AGGREGATOR[fault]
    assert response.status_code == status, response.text
    if status != 200:
        error = response.json()["error"]
        assert error["code"].startswith(code) and ("agg" in error["message"] or "mix" in error["message"]), error
    faulty.wait_for(lambda: faulty.gateway.inflight == 0, what="request over")
