"""Chaos figures: engines killed, restarted and misbehaving, and what clients saw; as JSON and Markdown.

The long form of `tests/reliability/test_chaos.py`, with the times the
tests leave out. Engines are fake engine processes; the gateway runs on a
thread of this process, so its metrics are read directly.

- kill a proposer: 300 streamed requests at concurrency 16 to a mixture of
  three proposers (quorum 2); one proposer is SIGKILLed after 60 answers.
  Failed requests, latency before and after the kill, the time from the
  kill to its circuit opening, from its restart to the circuit closing
  (requests sent one by one meanwhile), and its calls afterwards.
- kill the aggregator (call timeout 120 s): 20 requests, mixture and
  pass-through, streamed or not: their statuses and how long each took.
- faults: each fault of `tests/support/engine_faults.py`, on a proposer and
  on the aggregator, 5 requests each: statuses, the proposer's status in
  the trace, and the slowest answer (never a hang: the client waits 15 s).

    python bench/reliability/chaos.py --out docs/reliability/chaos
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # the test support modules live in the repository's tests/

from figures import doc_for, publish  # noqa: E402

from moa_local.bench.client import Target  # noqa: E402
from moa_local.bench.stats import RequestRecord  # noqa: E402
from tests.support.engine_faults import AGGREGATOR, apply, three_proposers  # noqa: E402
from tests.support.engine_processes import EngineProcess, processes  # noqa: E402
from tests.support.gateway_fixtures import GatewayServer  # noqa: E402
from tests.support.traffic import client, closed_loop, process_config, until  # noqa: E402

NAMES = ("p1", "p2", "p3", "agg")
CLIENT_TIMEOUT_S = 15.0


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return round(values[min(len(values) - 1, round(q * (len(values) - 1)))], 4)


async def kill_proposer(engines: dict[str, EngineProcess]) -> dict[str, Any]:
    circuit = {"failures": 3, "cooldown_s": 1.0}
    config = process_config(engines, {"mix": three_proposers()}, max_retries=1, timeout_s=30, circuit=circuit)
    gw = GatewayServer(config)
    p2 = engines["p2"]
    try:
        target = Target(gw.url, "mix", max_tokens=16, trace=False, timeout_s=CLIENT_TIMEOUT_S)
        records: list[RequestRecord] = []

        def circuit_open() -> bool:
            return gw.metric("moa_circuit_open", endpoint="p2") == 1

        async with client(16) as http:
            run = asyncio.ensure_future(closed_loop(http, target, 300, 16, records))
            await until(lambda: len(records) >= 60, 60, "60 answers")
            before = len(records)
            p2.kill()
            killed = time.perf_counter()
            opened_after = await until(lambda: circuit_open() or run.done(), 30, "circuit open")
            await run
            p2.start()
            restarted = time.perf_counter()
            later: list[RequestRecord] = []
            while circuit_open() and time.perf_counter() - restarted < 60:
                later += await closed_loop(http, target, 1, 1)
            closed_after = time.perf_counter() - restarted
            after_close = await closed_loop(http, target, 20, 2)
        latency = [r.e2e_s for r in records[:before] if r.ok], [r.e2e_s for r in records[before:] if r.ok]
        return {
            "requests": len(records), "failed": sum(not r.ok for r in records),
            "failed_after_restart": sum(not r.ok for r in later + after_close),
            "skipped_calls": gw.metric("moa_agent_calls_total", endpoint="p2", role="proposer", outcome="skipped"),
            "kill_to_circuit_open_s": round(opened_after, 3), "restart_to_circuit_closed_s": round(closed_after, 3),
            "requests_until_closed": len(later), "p2_calls_after_restart": p2.chat_requests(),
            "p50_before_kill_s": pct(latency[0], 0.5), "p99_before_kill_s": pct(latency[0], 0.99),
            "p50_after_kill_s": pct(latency[1], 0.5), "p99_after_kill_s": pct(latency[1], 0.99),
            "since_kill_s": round(restarted - killed, 2),
        }  # fmt: skip
    finally:
        gw.stop()


def kill_aggregator(engines: dict[str, EngineProcess]) -> dict[str, Any]:
    gw = GatewayServer(process_config(engines, {"mix": three_proposers(timeout_s=300)}, timeout_s=120))
    try:
        engines["agg"].kill()
        rows = []
        for i in range(20):
            model, stream = ("mix", "agg")[i % 2], bool(i // 2 % 2)
            started = time.perf_counter()
            body = {"model": model, "messages": [{"role": "user", "content": "hello"}], "stream": stream}
            try:
                response = gw.http.post("/v1/chat/completions", json=body, timeout=CLIENT_TIMEOUT_S)
                status, message = response.status_code, response.json().get("error", {}).get("message", "")
            except httpx.HTTPError as exc:
                status, message = None, f"{type(exc).__name__}"
            rows.append({"model": model, "stream": stream, "status": status, "seconds": time.perf_counter() - started,
                         "names_agg": "agg" in message, "circuit_open": "circuit open" in message})  # fmt: skip
        seconds = [r["seconds"] for r in rows]
        return {
            "requests": len(rows), "call_timeout_s": 120, "statuses": dict(Counter(str(r["status"]) for r in rows)),
            "all_name_agg": all(r["names_agg"] for r in rows),
            "circuit_open_answers": sum(r["circuit_open"] for r in rows),
            "p50_s": pct(seconds, 0.5), "max_s": pct(seconds, 1.0), "first_s": round(seconds[0], 3),
        }  # fmt: skip
    finally:
        engines["agg"].start()
        gw.stop()


def faults(engines: dict[str, EngineProcess], repeat: int) -> dict[str, Any]:
    mixtures = {"mix": three_proposers(deadline_s=1.0, timeout_s=3.0)}
    gw = GatewayServer(process_config(engines, mixtures, max_retries=1, timeout_s=10, circuit={"failures": 1000}))
    out: dict[str, Any] = {}
    try:
        for fault in sorted(AGGREGATOR):
            for role, engine in (("proposer", "p2"), ("aggregator", "agg")):
                for e in engines.values():
                    e.reset()
                apply(engines[engine], fault)
                statuses: Counter[str] = Counter()
                agent: Counter[str] = Counter()
                seconds = []
                for _ in range(repeat):
                    body = {"model": "mix", "messages": [{"role": "user", "content": "hi"}], "moa": {"trace": True}}
                    started = time.perf_counter()
                    try:
                        response = gw.http.post("/v1/chat/completions", json=body, timeout=CLIENT_TIMEOUT_S)
                        statuses[str(response.status_code)] += 1
                        if response.status_code == 200 and role == "proposer":
                            agents = response.json()["moa"]["layers"][0]["agents"]
                            agent[next(a["status"] for a in agents if a["endpoint"] == "p2")] += 1
                    except httpx.HTTPError as exc:
                        statuses[type(exc).__name__] += 1
                    seconds.append(time.perf_counter() - started)
                out[f"{fault} on {role}"] = {"statuses": dict(statuses), "proposer_status": dict(agent),
                                             "expected": 200 if role == "proposer" else AGGREGATOR[fault][0],
                                             "p50_s": pct(seconds, 0.5), "max_s": pct(seconds, 1.0)}  # fmt: skip
        for e in engines.values():
            e.reset()
    finally:
        gw.stop()
    return out


def markdown(result: dict[str, Any]) -> str:
    k, a = result["kill_proposer"], result["kill_aggregator"]
    lines = [
        f"Chaos run of {result['run']['date']} (fake engines as processes, loopback).", "",
        f"- **A proposer of three SIGKILLed after 60 of 300 requests** (concurrency 16, quorum 2): "
        f"{k['failed']} failed. Its circuit opened {k['kill_to_circuit_open_s']} s after the kill and closed "
        f"{k['restart_to_circuit_closed_s']} s after its restart ({k['requests_until_closed']} requests meanwhile, "
        f"{k['failed_after_restart']} failed); it then received {k['p2_calls_after_restart']} calls "
        f"({k['skipped_calls']:g} calls skipped while it was open). "
        f"Latency p50/p99: {k['p50_before_kill_s']}/{k['p99_before_kill_s']} s before the kill, "
        f"{k['p50_after_kill_s']}/{k['p99_after_kill_s']} s after.",
        f"- **The aggregator SIGKILLed** (call timeout {a['call_timeout_s']} s): {a['requests']} requests, statuses "
        f"{a['statuses']}, every message naming it: {a['all_name_agg']}; {a['circuit_open_answers']} answered from "
        f"the open circuit. Time to the error: first {a['first_s']} s, p50 {a['p50_s']} s, max {a['max_s']} s.", "",
        "| fault | on | statuses | expected | faulty proposer in the trace | p50 s | max s |",
        "|---|---|---|---:|---|---:|---:|",
    ]  # fmt: skip
    for name, f in result["faults"].items():
        fault, role = name.split(" on ")
        lines.append(f"| {fault} | {role} | {f['statuses']} | {f['expected']} | {f['proposer_status'] or ''} "
                     f"| {f['p50_s']} | {f['max_s']} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/reliability/chaos", help="writes OUT.json and OUT.md")
    parser.add_argument(
        "--doc",
        default=None,
        help="the document whose figures to update (default: docs/reliability.md, when --out is left at its default)",
    )
    parser.add_argument("--repeat", type=int, default=5, help="requests per fault and role")
    args = parser.parse_args()
    engines = dict(zip(NAMES, processes(f"{n}-model" for n in NAMES), strict=True))
    try:
        result = {
            "run": {"date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")},
            "kill_proposer": asyncio.run(kill_proposer(engines)),
            "kill_aggregator": kill_aggregator(engines),
            "faults": faults(engines, args.repeat),
        }
    finally:
        for engine in engines.values():
            engine.stop()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(result))
    doc = doc_for(args.doc, args.out, "docs/reliability/chaos")
    if doc is not None:
        publish(doc, "chaos", markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
