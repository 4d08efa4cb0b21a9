"""Soak: N minutes of mixed traffic through the gateway while faults come and go; figures as JSON and Markdown.

Four fake engines run as processes (three proposers, quorum 2, and an
aggregator) behind the gateway, itself a process (`moa-local serve`) so
that its RSS is its own. `--concurrency` clients stream requests without
pause: mostly the mixture, some pass-throughs to p1, some malformed bodies
(a 400 is their right answer). Every minute the same faults come round:

    0:10  p3 killed (SIGKILL)        0:20  p3 restarted
    0:25  p2 slow (3 s, past the 2 s layer deadline) until 0:35
    0:40  p1 answers 500             until 0:50
    0:52  the aggregator answers 503 until 0:55

None of the proposer faults may fail a mixture request (two proposers of
three are always fine). The aggregator's window fails requests with a 502
naming it, and p1's fails its pass-throughs (as do their circuits in the
cool-down after each window): those errors are explained; any other error
is not. Every second the gateway's RSS is sampled; each
minute gets its requests, errors by kind, latency p50/p99 and RSS. The
summary compares RSS after the warm-up with RSS at the end (target: under
5% growth) and p99 across minutes. It asserts nothing.

    python bench/reliability/soak.py --minutes 30 --out docs/reliability/soak
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # the test support modules live in the repository's tests/

from figures import doc_for, publish  # noqa: E402

from moa_local.bench.client import Target, send  # noqa: E402
from moa_local.bench.stats import RequestRecord  # noqa: E402
from tests.support.engine_processes import EngineProcess, processes  # noqa: E402
from tests.support.gateway_process import GatewayProcess  # noqa: E402
from tests.support.traffic import raw_process_config  # noqa: E402

NAMES = ("p1", "p2", "p3", "agg")
CYCLE_S = 60.0
# (second of the cycle, engine, action, argument); a window is the time between a fault and its end.
SCHEDULE = [
    (10.0, "p3", "kill", None), (20.0, "p3", "restart", None),
    (25.0, "p2", "set", {"latency_ms": 3000}), (35.0, "p2", "reset", None),
    (40.0, "p1", "set", {"status": 500}), (50.0, "p1", "reset", None),
    (52.0, "agg", "set", {"status": 503, "error_message": "engine overloaded"}), (55.0, "agg", "reset", None),
]  # fmt: skip
COOLDOWN_S = 2.0  # the circuit's: after a fault window it keeps skipping the engine this long, then probes
MARGIN_S = 1.0  # a request that overlaps a window (and the cool-down after it) by this much may meet the fault


@dataclass
class Window:
    engine: str
    start: float  # seconds since the run's start
    end: float | None = None


@dataclass
class Result:
    kind: str  # "mix", "p1" or "bad"
    start: float
    end: float
    ok: bool
    status: int | None
    error: str | None


class Soak:
    def __init__(self, minutes: float, concurrency: int, seed: int, workdir: Path) -> None:
        self.duration = minutes * 60
        self.concurrency = concurrency
        self.random = random.Random(seed)
        self.workdir = workdir
        self.engines: dict[str, EngineProcess] = {}
        self.windows: list[Window] = []
        self.results: list[Result] = []
        self.rss: list[tuple[float, int]] = []
        self.t0 = 0.0

    def now(self) -> float:
        return time.perf_counter() - self.t0

    def start(self) -> GatewayProcess:
        started = processes((f"{n}-model" for n in NAMES), tokens=16, token_delay_ms=2)
        self.engines = dict(zip(NAMES, started, strict=True))
        layer = {"agents": [{"endpoint": p} for p in ("p1", "p2", "p3")], "min_ok": 2, "deadline_s": 2.0}
        mixtures = {"mix": {"layers": [layer], "aggregator": {"endpoint": "agg"}, "timeout_s": 20}}
        raw = raw_process_config(
            self.engines, mixtures, {"probe_interval_s": 1.0, "max_inflight": 256}, max_retries=1, timeout_s=10,
            circuit={"failures": 3, "cooldown_s": COOLDOWN_S},
        )  # fmt: skip
        return GatewayProcess(raw, self.workdir / "gateway.log")

    async def client(self, http: httpx.AsyncClient, gateway: GatewayProcess) -> None:
        while self.now() < self.duration:
            roll = self.random.random()
            kind = "mix" if roll < 0.75 else "p1" if roll < 0.95 else "bad"
            start = self.now()
            if kind == "bad":  # a malformed body: its right answer is a 400
                try:
                    response = await http.post(f"{gateway.url}/v1/chat/completions", content=b'{"model": "mix", "me')
                except httpx.HTTPError as exc:
                    self.results.append(Result(kind, start, self.now(), False, None, f"{type(exc).__name__}: {exc}"))
                    continue
                ok = response.status_code == 400
                error = None if ok else f"{response.status_code}: {response.text[:200]}"
                self.results.append(Result(kind, start, self.now(), ok, response.status_code, error))
                continue
            target = Target(gateway.url, kind, max_tokens=16, trace=False, timeout_s=60)
            record = RequestRecord(kind, "closed", self.concurrency, len(self.results))
            words = " ".join(self.random.choice(("what", "why", "how", "tell", "me", "more")) for _ in range(12))
            await send(http, target, [{"role": "user", "content": words}], record, self.t0)
            self.results.append(Result(kind, start, self.now(), record.ok, record.status, record.error))

    async def faults(self) -> None:
        cycle = 0
        while True:
            for at, name, action, argument in SCHEDULE:
                when = cycle * CYCLE_S + at
                if when >= self.duration:
                    return
                await asyncio.sleep(max(0.0, when - self.now()))
                engine = self.engines[name]
                if action in ("kill", "set"):
                    self.windows.append(Window(name, self.now()))
                if action == "kill":
                    await asyncio.to_thread(engine.kill)
                elif action == "restart":
                    await asyncio.to_thread(engine.start)
                elif action == "set":
                    await asyncio.to_thread(engine.set, **(argument or {}))
                else:
                    await asyncio.to_thread(engine.reset)
                if action in ("restart", "reset"):
                    next(w for w in reversed(self.windows) if w.engine == name).end = self.now()
            cycle += 1

    async def sample(self, gateway: GatewayProcess) -> None:
        while self.now() < self.duration:
            self.rss.append((self.now(), gateway.rss_bytes()))
            await asyncio.sleep(1.0)

    async def run(self) -> dict[str, Any]:
        gateway = self.start()
        try:
            self.t0 = time.perf_counter()
            limits = httpx.Limits(max_connections=self.concurrency)
            async with httpx.AsyncClient(limits=limits, timeout=60) as http:
                await asyncio.gather(self.faults(), self.sample(gateway),
                                     *(self.client(http, gateway) for _ in range(self.concurrency)))  # fmt: skip
            final = {f"{name}{dict(labels)}": value for (name, labels), value in gateway.metrics().items()
                     if name in ("moa_requests_total", "moa_gateway_inflight", "moa_circuit_open")}  # fmt: skip
            tracebacks = gateway.tracebacks()
        finally:
            gateway.stop()
            for engine in self.engines.values():
                engine.stop()
        return {"final_metrics": final, "gateway_tracebacks": tracebacks}

    def explained(self, result: Result) -> str | None:
        """The fault window that explains a failed request, if one does."""
        for w in self.windows:
            end = self.duration if w.end is None else w.end
            overlaps = result.start < end + COOLDOWN_S + MARGIN_S and result.end > w.start - MARGIN_S
            meets = w.engine == "agg" or (w.engine == "p1" and result.kind == "p1")
            if overlaps and meets and w.engine in (result.error or ""):
                return f"{w.engine} fault at {w.start:.0f} s"
        return None


def error_kind(result: Result) -> str:
    """The error's message, its varying numbers (seconds to the next probe) left out."""
    return re.sub(r"probing again in \d+s", "probing again soon", result.error or f"status {result.status}")[:90]


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def report(soak: Soak, extra: dict[str, Any], minutes: float, warmup_min: float) -> dict[str, Any]:
    per_minute = []
    for minute in range(int(-(-minutes // 1))):
        lo, hi = minute * 60, (minute + 1) * 60
        done = [r for r in soak.results if lo <= r.end < hi]
        latencies = [r.end - r.start for r in done if r.ok and r.kind != "bad"]
        rss = [b for t, b in soak.rss if lo <= t < hi]
        errors: dict[str, int] = {}
        for r in done:
            if not r.ok:
                key = ("explained " if soak.explained(r) else "UNEXPLAINED ") + error_kind(r)
                errors[key] = errors.get(key, 0) + 1
        per_minute.append({
            "minute": minute + 1, "requests": len(done), "ok": sum(r.ok for r in done),
            "p50_s": _round(percentile(latencies, 0.5)), "p99_s": _round(percentile(latencies, 0.99)),
            "rss_mib": round(rss[-1] / 2**20, 1) if rss else None, "errors": errors,
        })  # fmt: skip
    failed = [r for r in soak.results if not r.ok]
    unexplained = [r for r in failed if soak.explained(r) is None]
    after = [b for t, b in soak.rss if t >= warmup_min * 60]
    growth = (after[-1] - after[0]) / after[0] * 100 if len(after) >= 2 else None
    p99s = [m["p99_s"] for m in per_minute if m["minute"] > warmup_min and m["p99_s"] is not None]
    return {
        "run": {"date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "minutes": minutes,
                "warmup_minutes": warmup_min, "concurrency": soak.concurrency, "schedule_per_minute": SCHEDULE},
        "summary": {
            "requests": len(soak.results), "failed": len(failed), "explained_errors": len(failed) - len(unexplained),
            "unexplained_errors": len(unexplained),
            "unexplained_examples": [f"{r.kind} at {r.start:.1f}-{r.end:.1f} s: {r.error}" for r in unexplained[:10]],
            "rss_after_warmup_mib": round(after[0] / 2**20, 1) if after else None,
            "rss_end_mib": round(after[-1] / 2**20, 1) if after else None,
            "rss_max_mib": round(max(b for _, b in soak.rss) / 2**20, 1) if soak.rss else None,
            "rss_growth_after_warmup_pct": _round(growth, 2),
            "p99_min_s": _round(min(p99s)) if p99s else None, "p99_max_s": _round(max(p99s)) if p99s else None,
            "p99_median_s": _round(statistics.median(p99s)) if p99s else None,
            "gateway_tracebacks": extra["gateway_tracebacks"],
        },
        "per_minute": per_minute,
        "final_metrics": extra["final_metrics"],
    }  # fmt: skip


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def markdown(result: dict[str, Any]) -> str:
    s, run = result["summary"], result["run"]
    lines = [
        f"Soak run of {run['date']}: {run['minutes']:g} minutes at concurrency {run['concurrency']}, "
        f"faults every minute (warm-up: {run['warmup_minutes']:g} min).", "",
        f"- requests: {s['requests']:,}; failed: {s['failed']:,} ({s['explained_errors']:,} explained by an "
        f"aggregator or pass-through fault window, **{s['unexplained_errors']:,} unexplained**)",
        f"- gateway RSS: {s['rss_after_warmup_mib']} MiB after warm-up, {s['rss_end_mib']} MiB at the end "
        f"(**{s['rss_growth_after_warmup_pct']}%** growth), {s['rss_max_mib']} MiB at most",
        f"- p99 latency per minute after warm-up: {s['p99_min_s']} to {s['p99_max_s']} s "
        f"(median {s['p99_median_s']} s)",
        f"- tracebacks in the gateway's log: {s['gateway_tracebacks']}", "",
        "| minute | requests | ok | p50 s | p99 s | RSS MiB | errors |", "|---:|---:|---:|---:|---:|---:|---|",
    ]  # fmt: skip
    for m in result["per_minute"]:
        errors = "; ".join(f"{k} (x{v})" for k, v in sorted(m["errors"].items())) or "none"
        lines.append(f"| {m['minute']} | {m['requests']:,} | {m['ok']:,} | {m['p50_s']} | {m['p99_s']} "
                     f"| {m['rss_mib']} | {errors} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--warmup-minutes", type=float, default=None, help="default: a tenth of the run, >= 0.5")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seed", type=int, default=17)
    parser.add_argument("--out", default="docs/reliability/soak", help="writes OUT.json and OUT.md")
    parser.add_argument(
        "--doc",
        default=None,
        help="the document whose figures to update (default: docs/reliability.md, when --out is left at its default)",
    )
    args = parser.parse_args()
    warmup = args.warmup_minutes if args.warmup_minutes is not None else max(0.5, args.minutes / 10)
    with tempfile.TemporaryDirectory(prefix="moa-soak-") as workdir:
        soak = Soak(args.minutes, args.concurrency, args.seed, Path(workdir))
        extra = asyncio.run(soak.run())
    result = report(soak, extra, args.minutes, warmup)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(result))
    doc = doc_for(args.doc, args.out, "docs/reliability/soak")
    if doc is not None:
        publish(doc, "soak", markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
