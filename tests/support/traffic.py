"""Traffic for the reliability suite: closed-loop streaming requests, and a gateway config over engine processes.

`closed_loop` keeps `concurrency` streamed chat completions in flight until
`count` have been sent, each answered by `moa_local.bench.client.send`
(which never raises: every request yields a `RequestRecord`, its error
included), appending each record to `done` as it finishes so that a test
can act in the middle of a run. `process_config` (and `raw_process_config`,
for a gateway process) is the config of a gateway in front of
`EngineProcess` engines. `until` waits, bounded, for
a condition, from async code.

Left out on purpose: starting engines (`engine_processes.py`) and judging
the records (the tests and scripts do).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Mapping
from typing import Any

import httpx

from moa_local.bench.client import Target, send
from moa_local.bench.stats import RequestRecord
from moa_local.config import Config, parse_config
from tests.support.engine_processes import EngineProcess


def raw_process_config(
    engines: Mapping[str, EngineProcess],
    mixtures: Mapping[str, Mapping[str, Any]],
    gateway: Mapping[str, Any] | None = None,
    **endpoint_fields: Any,
) -> dict[str, Any]:
    """The config (as YAML would hold it) of a gateway in front of `engines`."""
    return {
        "endpoints": {
            name: {"base_url": e.base_url, "model": e.model, **endpoint_fields} for name, e in engines.items()
        },
        "mixtures": dict(mixtures),
        "gateway": {"api_keys_env": None, **(gateway or {})},
    }


def process_config(
    engines: Mapping[str, EngineProcess],
    mixtures: Mapping[str, Mapping[str, Any]],
    gateway: Mapping[str, Any] | None = None,
    **endpoint_fields: Any,
) -> Config:
    """The same, validated."""
    return parse_config(json.dumps(raw_process_config(engines, mixtures, gateway, **endpoint_fields)), "<reliability>")


def client(concurrency: int, timeout_s: float = 60.0) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    return httpx.AsyncClient(limits=limits, timeout=timeout_s)


async def closed_loop(
    http: httpx.AsyncClient, target: Target, count: int, concurrency: int, done: list[RequestRecord] | None = None
) -> list[RequestRecord]:
    """Send `count` requests, `concurrency` at a time; every record, in the order they finished."""
    records = done if done is not None else []
    numbers = iter(range(count))
    origin = time.perf_counter()

    async def worker() -> None:
        for i in numbers:  # one iterator shared by the workers: each number is sent once
            record = RequestRecord(target.model, "closed", concurrency, i)
            records.append(await send(http, target, [{"role": "user", "content": f"question {i}"}], record, origin))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return records


async def until(check: Callable[[], bool], timeout_s: float, what: str) -> float:
    """Wait for `check()` to hold, polling; the seconds it took. AssertionError after `timeout_s`."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout_s:
            raise AssertionError(f"{what}: not true within {timeout_s:g} s")
        await asyncio.sleep(0.02)
    return time.monotonic() - start


def failures(records: list[RequestRecord]) -> list[str]:
    return [f"#{r.index}: {r.status} {r.error}" for r in records if not r.ok]
