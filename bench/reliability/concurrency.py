"""Concurrency figures: bursts of 1,000 streamed requests at once, and the gateway's RSS around them.

The gateway runs as its own process (`moa-local serve`, so its RSS is its
own) in front of three fake engine processes (a mixture of two proposers
and an aggregator). After a warm-up of 500 requests, each of `--rounds`
bursts sends 1,000 streamed requests at once; around each burst the RSS is
read (before, at its peak, sampled every 100 ms, and after the gauges are
back to 0 and a few seconds have passed), with the errors, the latency
percentiles and the in-flight gauges. The test
(`tests/reliability/test_concurrency.py`) asserts the errors, gauges and
tasks; the RSS figures are here.

    python bench/reliability/concurrency.py --out docs/reliability/concurrency
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # the test support modules live in the repository's tests/

from figures import doc_for, publish  # noqa: E402

from moa_local.bench.client import Target  # noqa: E402
from tests.support.engine_processes import processes  # noqa: E402
from tests.support.gateway_process import GatewayProcess  # noqa: E402
from tests.support.traffic import client, closed_loop, raw_process_config  # noqa: E402

ENDPOINTS = ("p1", "p2", "agg")
MIXTURE = {"layers": [{"agents": [{"endpoint": "p1"}, {"endpoint": "p2"}], "min_ok": 2}],
           "aggregator": {"endpoint": "agg"}}  # fmt: skip
SETTLE_S = 5.0


def mib(value: int) -> float:
    return round(value / 2**20, 1)


def pct(values: list[float], q: float) -> float | None:
    values = sorted(values)
    return round(values[min(len(values) - 1, round(q * (len(values) - 1)))], 3) if values else None


async def burst(gateway: GatewayProcess, size: int) -> dict[str, Any]:
    target = Target(gateway.url, "mix", max_tokens=16, trace=False, timeout_s=300)
    before = gateway.rss_bytes()
    peak = before
    done = asyncio.Event()

    async def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, gateway.rss_bytes())
            await asyncio.sleep(0.1)

    sampler = asyncio.create_task(sample())
    started = time.perf_counter()
    async with client(size, timeout_s=300) as http:
        records = await closed_loop(http, target, size, size)
    seconds = time.perf_counter() - started
    done.set()
    await sampler
    deadline = time.monotonic() + 30
    gauges = {}
    while time.monotonic() < deadline:
        metrics = gateway.metrics()
        gauges = {"moa_gateway_inflight": metrics.get(("moa_gateway_inflight", ()), 0.0)} | {
            f"moa_inflight{{endpoint={e}}}": metrics.get(("moa_inflight", (("endpoint", e),)), 0.0) for e in ENDPOINTS
        }
        if not any(gauges.values()):
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(SETTLE_S)
    after = gateway.rss_bytes()
    latency = [r.e2e_s for r in records if r.ok]
    errors: dict[str, int] = {}
    for r in records:
        if not r.ok:
            errors[str(r.error)[:80]] = errors.get(str(r.error)[:80], 0) + 1
    return {
        "requests": len(records), "errors": sum(errors.values()), "error_kinds": errors, "seconds": round(seconds, 2),
        "p50_s": pct(latency, 0.5), "p99_s": pct(latency, 0.99), "max_s": pct(latency, 1.0),
        "gauges_after": gauges, "rss_before_mib": mib(before), "rss_peak_mib": mib(peak), "rss_after_mib": mib(after),
        "rss_after_vs_before_pct": round((after - before) / before * 100, 1),
    }  # fmt: skip


async def run(rounds: int, size: int, workdir: Path) -> dict[str, Any]:
    engines = dict(zip(ENDPOINTS, processes(f"{e}-model" for e in ENDPOINTS), strict=True))
    raw = raw_process_config(engines, {"mix": MIXTURE}, {"max_inflight": 2 * size}, max_concurrency=64)
    gateway = GatewayProcess(raw, workdir / "gateway.log")
    try:
        target = Target(gateway.url, "mix", max_tokens=16, trace=False, timeout_s=60)
        async with client(16) as http:
            warm = await closed_loop(http, target, 500, 16)
        bursts = [await burst(gateway, size) for _ in range(rounds)]
        tracebacks = gateway.tracebacks()
    finally:
        gateway.stop()
        for engine in engines.values():
            engine.stop()
    return {"run": {"date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "burst": size, "rounds": rounds,
                    "warmup_requests": len(warm), "warmup_errors": sum(not r.ok for r in warm)},
            "bursts": bursts, "gateway_tracebacks": tracebacks}  # fmt: skip


def markdown(result: dict[str, Any]) -> str:
    run = result["run"]
    lines = [f"Concurrency run of {run['date']}: {run['rounds']} bursts of {run['burst']:,} streamed mixture "
             f"requests at once, after {run['warmup_requests']} warm-up requests; gateway tracebacks: "
             f"{result['gateway_tracebacks']}.", "",
             "| burst | errors | seconds | p50 s | p99 s | in flight after | RSS before MiB | peak | after "
             "| after vs before |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for i, b in enumerate(result["bursts"], start=1):
        lines.append(f"| {i} | {b['errors']} | {b['seconds']} | {b['p50_s']} | {b['p99_s']} "
                     f"| {sum(b['gauges_after'].values()):g} | {b['rss_before_mib']} | {b['rss_peak_mib']} "
                     f"| {b['rss_after_mib']} | {b['rss_after_vs_before_pct']:+}% |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/reliability/concurrency", help="writes OUT.json and OUT.md")
    parser.add_argument(
        "--doc",
        default=None,
        help="the document whose figures to update (default: docs/reliability.md, when --out is left at its default)",
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--burst", type=int, default=1000)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4 * args.burst:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(4 * args.burst, hard), hard))
    with tempfile.TemporaryDirectory(prefix="moa-concurrency-") as workdir:
        result = asyncio.run(run(args.rounds, args.burst, Path(workdir)))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(result))
    doc = doc_for(args.doc, args.out, "docs/reliability/concurrency")
    if doc is not None:
        publish(doc, "concurrency", markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
