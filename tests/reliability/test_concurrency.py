"""Concurrency: 1,000 streamed mixture requests at once, and nothing left behind afterwards.

The engines are fake engine processes; the gateway runs on a thread so
that its in-flight gauges and the tasks alive on its event loop can be
read. Every request must succeed, and once they are over the gauges are
back to 0 and the loop holds the same tasks as before the run. The RSS
figures (back within 10% of before) are the script's
(`bench/reliability/concurrency.py`), not this test's.
"""

from __future__ import annotations

import asyncio
import resource
from collections.abc import Iterator

import pytest

from moa_local.bench.client import Target
from tests.support.engine_processes import EngineProcess, processes
from tests.support.gateway_fixtures import GatewayFactory, GatewayServer
from tests.support.traffic import client, closed_loop, failures, process_config

REQUESTS = 1_000
ENDPOINTS = ("p1", "p2", "agg")
MIXTURE = {"layers": [{"agents": [{"endpoint": "p1"}, {"endpoint": "p2"}], "min_ok": 2}],
           "aggregator": {"endpoint": "agg"}}  # fmt: skip


@pytest.fixture(scope="module")
def engines() -> Iterator[dict[str, EngineProcess]]:
    started = dict(zip(ENDPOINTS, processes(f"{name}-model" for name in ENDPOINTS), strict=True))
    yield started
    for engine in started.values():
        engine.stop()


def loop_tasks(gw: GatewayServer) -> list[str]:
    """The tasks alive on the gateway's loop, but a health probe (one may be under way at any moment)."""
    return [name for name in gw.pending_tasks() if name not in ("Prober._probe", "Prober.probe_once")]


async def test_fault_1000_concurrent_streams_all_succeed_and_leave_no_task_or_gauge_behind(
    engines: dict[str, EngineProcess], gateway_server: GatewayFactory
) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = 4 * REQUESTS  # both ends of every client connection live in this process, and the engine calls
    if soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            pytest.skip(f"needs {needed} open files, the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    config = process_config(engines, {"mix": MIXTURE}, {"max_inflight": 2 * REQUESTS}, max_concurrency=64)
    gw = gateway_server(config)
    gw.wait_for(lambda: gw.http.get("/ready").status_code == 200, 10, "gateway ready")
    before = await asyncio.to_thread(loop_tasks, gw)
    target = Target(gw.url, "mix", max_tokens=16, trace=False, timeout_s=120)
    async with client(REQUESTS, timeout_s=120) as http:
        records = await closed_loop(http, target, REQUESTS, REQUESTS)
    assert len(records) == REQUESTS and failures(records) == []
    assert all(r.completion_tokens for r in records)
    await asyncio.to_thread(gw.wait_for, lambda: gw.gateway.inflight == 0, 10.0, "gateway idle")
    assert gw.metric("moa_gateway_inflight") == 0
    assert all(gw.metric("moa_inflight", endpoint=e) == 0 for e in ENDPOINTS)
    assert all(gw.metric("moa_queued", endpoint=e) == 0 for e in ENDPOINTS)
    assert gw.metric("moa_requests_total", mixture="mix", outcome="ok") == REQUESTS
    assert await asyncio.to_thread(loop_tasks, gw) == before
