"""`moa-local bench`: load a gateway (or an engine) and measure what it delivers.

For each model, at each closed-loop concurrency (a fixed number of requests
in flight) and each open-loop rate (Poisson arrivals, in requests/s), a
*segment* sends `requests` streamed chat completions, bounded also by
`duration_limit_s` (no new request starts after it). Every request yields a
record (`client.py`); each segment is summarised (`stats.py`)
with the engines' own figures over the same span (`engines.py`), and
the whole run is written as JSON, Markdown and plots (`report.py`; the types in `result.py`).

The load generator is one asyncio process with a plain httpx client; on a
small machine it shares the cores with the gateway and the engines, which
the report states. Left out on purpose: warm-up beyond `warmup` requests per
model, and request shaping other than the prompts' own lengths.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import random
import time
from collections.abc import Callable, Coroutine, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from moa_local.bench.client import Target, auth_headers, send
from moa_local.bench.cpu import CpuWatch, parse_pid
from moa_local.bench.dataset import Conversation, load_conversations
from moa_local.bench.engines import EngineWatch
from moa_local.bench.result import BenchPlan, BenchResult, Segment
from moa_local.bench.stats import RequestRecord, summarize
from moa_local.errors import BenchError
from moa_local.urls import api_base

PREFLIGHT_TIMEOUT_S = 10.0
OPEN_LOOP_CONNECTIONS = 1024


def parse_levels(text: str, kind: Callable[[str], float], what: str) -> tuple[float, ...]:
    """'1,4,16' -> (1, 4, 16); every level must be a positive number."""
    try:
        levels = tuple(kind(part.strip()) for part in text.split(",") if part.strip())
    except ValueError:
        raise BenchError(f"{what}: expected comma-separated numbers like 1,4,16 (got '{text}')") from None
    if not levels or any(not math.isfinite(level) or level <= 0 for level in levels):
        raise BenchError(f"{what}: every level must be a positive number (got '{text}')")
    return levels


def make_plan(
    url: str, models: tuple[str, ...], out: Path, *, concurrency: str | None, rate: str | None,
    cpu_pids: tuple[str, ...] = (), **fields: Any,
) -> BenchPlan:  # fmt: skip
    """A plan from the command line's strings: levels '1,4,16', rates '0.5,1', processes 'LABEL=PID'."""
    levels = parse_levels(concurrency, int, "--concurrency") if concurrency else () if rate else (1, 4, 16)
    rates = parse_levels(rate, float, "--rate") if rate else ()
    try:
        watched = tuple(parse_pid(text) for text in cpu_pids)
    except ValueError as exc:
        raise BenchError(f"--cpu-pid: {exc}") from None
    return BenchPlan(url, models, out, tuple(int(c) for c in levels), rates, cpu_pids=watched, **fields)


def run(plan: BenchPlan, *, quiet: bool = False) -> BenchResult:
    """Load the dataset, run every segment, write the report; return the result."""
    from moa_local.bench.report import write_report

    conversations = load_conversations(plan.dataset)
    try:
        plan.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BenchError(f"--out {plan.out}: cannot create the folder ({exc.strerror})") from None
    result = _event_loop_run(run_segments(plan, conversations, Console(stderr=True, quiet=quiet)))
    write_report(result)
    return result


def _event_loop_run(main: Coroutine[Any, Any, BenchResult]) -> BenchResult:
    """On uvloop when it is there (it comes with uvicorn[standard]): the load generator's CPU is precious."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


async def run_segments(plan: BenchPlan, conversations: Sequence[Conversation], console: Console) -> BenchResult:
    result = BenchResult(plan, datetime.now(UTC).isoformat(timespec="seconds"))
    peak = max([*plan.concurrency, OPEN_LOOP_CONNECTIONS if plan.rates else 1])
    # Idle connections expire before the server's keep-alive timeout (uvicorn's: 5 s): reusing one just
    # as the server closes it fails with a ReadError the server never saw, which is not the server's fault.
    limits = httpx.Limits(max_connections=peak, max_keepalive_connections=peak, keepalive_expiry=2.0)
    timeout = httpx.Timeout(plan.timeout_s, connect=min(plan.timeout_s, 10.0))
    async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:
        await _preflight(client, plan)
        columns = (TextColumn("{task.description:<28}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[errors]} errors"), TimeElapsedColumn())  # fmt: skip
        with Progress(*columns, console=console, disable=console.quiet) as progress:
            for model in plan.models:
                target = plan.target(model)
                await _warm_up(client, target, conversations, plan.warmup)
                levels = [("closed", float(c)) for c in plan.concurrency] + [("open", r) for r in plan.rates]
                for mode, level in levels:
                    label = f"{model} {'c' if mode == 'closed' else 'rate'}={level:g}"
                    task = progress.add_task(label, total=plan.requests, errors=0)

                    def advance(record: RequestRecord, task: Any = task) -> None:
                        failed = progress.tasks[task].fields["errors"] + (0 if record.ok else 1)
                        progress.update(task, advance=1, errors=failed)

                    segment = await _segment(client, plan, target, conversations, mode, level, advance)
                    result.segments.append(segment)
                    if segment.summary.requests < plan.requests:
                        result.notes.append(f"{label}: stopped at the {plan.duration_limit_s:g}s duration limit "
                                            f"after {segment.summary.requests} requests")  # fmt: skip
    return result


async def _segment(
    client: httpx.AsyncClient, plan: BenchPlan, target: Target, conversations: Sequence[Conversation],
    mode: str, level: float, advance: Callable[[RequestRecord], None],
) -> Segment:  # fmt: skip
    cpu = CpuWatch(plan.cpu_pids)
    async with EngineWatch(plan.engine_metrics) as watch:
        origin = time.perf_counter()
        cpu.start()
        if mode == "closed":
            records = await _closed_loop(client, plan, target, conversations, int(level), origin, advance)
        else:
            records = await _open_loop(client, plan, target, conversations, level, origin, advance)
        cpu.stop()
        wall = time.perf_counter() - origin
    records.sort(key=lambda record: record.index)
    return Segment(summarize(records, wall), watch.figures(wall), records, cpu.figures(len(records)))


async def _closed_loop(
    client: httpx.AsyncClient, plan: BenchPlan, target: Target, conversations: Sequence[Conversation],
    concurrency: int, origin: float, advance: Callable[[RequestRecord], None],
) -> list[RequestRecord]:  # fmt: skip
    """`concurrency` workers, each sending its next request as soon as its last one ends."""
    records: list[RequestRecord] = []
    numbers = itertools.count()
    stop_at = origin + plan.duration_limit_s if plan.duration_limit_s else math.inf

    async def worker() -> None:
        while (index := next(numbers)) < plan.requests and time.perf_counter() < stop_at:
            record = RequestRecord(target.model, "closed", float(concurrency), index)
            records.append(await send(client, target, conversations[index % len(conversations)], record, origin))
            advance(record)

    await asyncio.gather(*(worker() for _ in range(min(concurrency, plan.requests))))
    return records


async def _open_loop(
    client: httpx.AsyncClient, plan: BenchPlan, target: Target, conversations: Sequence[Conversation],
    rate: float, origin: float, advance: Callable[[RequestRecord], None],
) -> list[RequestRecord]:  # fmt: skip
    """Requests start at Poisson arrival times, whatever is still in flight."""
    rng = random.Random(plan.seed)
    records: list[RequestRecord] = []
    tasks: list[asyncio.Task[None]] = []

    async def one(index: int) -> None:
        record = RequestRecord(target.model, "open", rate, index)
        records.append(await send(client, target, conversations[index % len(conversations)], record, origin))
        advance(record)

    arrival = origin
    for index in range(plan.requests):
        if plan.duration_limit_s and arrival - origin >= plan.duration_limit_s:
            break
        await asyncio.sleep(max(0.0, arrival - time.perf_counter()))
        tasks.append(asyncio.create_task(one(index)))
        arrival += rng.expovariate(rate)
    await asyncio.gather(*tasks)
    return records


async def _warm_up(client: httpx.AsyncClient, target: Target, conversations: Sequence[Conversation], n: int) -> None:
    """A few requests before measuring (engines and connections start cold); their results are dropped."""
    for index in range(n):
        record = RequestRecord(target.model, "warmup", 1.0, index)
        await send(client, target, conversations[-1 - index % len(conversations)], record, time.perf_counter())


async def _preflight(client: httpx.AsyncClient, plan: BenchPlan) -> None:
    """Fail early, with one line, when the URL does not answer or a model is not served there."""
    url = f"{api_base(plan.url)}/models"
    try:
        response = await client.get(url, headers=auth_headers(plan.api_key), timeout=PREFLIGHT_TIMEOUT_S)
    except httpx.HTTPError as exc:
        raise BenchError(f"cannot reach {url} ({type(exc).__name__}); is the gateway running?") from None
    if response.status_code != 200:
        raise BenchError(f"{url} answered HTTP {response.status_code}")
    try:
        served = {str(item.get("id")) for item in response.json().get("data", [])}
    except (ValueError, AttributeError):
        raise BenchError(f"{url} did not answer with a model list") from None
    missing = [model for model in plan.models if model not in served]
    if missing:
        raise BenchError(f"model '{missing[0]}' is not served at {plan.url}; it serves: {', '.join(sorted(served))}")
