"""The engines' saturated generation throughput, for the calls a mixture makes.

For a set of prompts, build every call the mixture would make (each
proposer's, each layer's, the aggregator's; references are stand-ins as
long as real answers, different for every prompt so that the engines'
prefix cache gains nothing a real run would not), then keep every engine
busy with its own share of those calls, `--concurrency` in flight each,
cycling through them, with nothing waiting on anything else. After a
warm-up, each engine's generated-token counter (`/metrics`) is read over a
fixed window: each engine's saturated rate for these calls, and their sum;
its running and waiting requests are sampled once a second meanwhile.
A batch's ceiling is its own tokens per engine at these rates (the engine
with the most work for its speed sets the time); the sum is reachable only
when the mixture splits its work in proportion to the engines' speeds. The calls still running when the
window closes are cancelled (closing the stream makes vLLM drop them).
`bench/targets.py` compares the gateway's batch run against it.

    python bench/saturation.py --config bench/cpu-bench.yaml --mixture moa-bench \
        --prompts 32 --max-tokens 48 --out bench-out/saturation.json
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import random
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from moa_local.bench_client import Target, send
from moa_local.bench_dataset import BUILTIN, load_conversations
from moa_local.bench_engines import metrics_url, scrape
from moa_local.bench_stats import RequestRecord, summarize
from moa_local.config import Config, MixtureConfig, load_config
from moa_local.errors import MoaError
from moa_local.references import build_messages

WORDS = sorted({word.strip(".,?!'").lower() for prompt in BUILTIN for word in prompt.split()} - {""})


def filler(tokens: int, seed: str) -> str:
    """A stand-in for one proposer's answer of about `tokens` tokens; its words depend on `seed`."""
    rng = random.Random(seed)
    words: list[str] = []
    while sum(len(word) + 1 for word in words) < tokens * 4:
        words.append(rng.choice(WORDS))
    return " ".join(words)


def calls(config: Config, mixture: MixtureConfig, conversations: list[Any], max_tokens: int) -> dict[str, list[Any]]:
    """Per endpoint: (target, messages) of every call the mixture makes for these prompts."""
    per_endpoint: dict[str, list[Any]] = defaultdict(list)
    for number, conversation in enumerate(conversations):
        references: list[str] = []
        for depth, layer in enumerate(mixture.layers):
            for agent in layer.agents:
                endpoint = config.endpoints[agent.endpoint]
                target = Target(endpoint.base_url, endpoint.model, agent.max_tokens, agent.temperature, trace=False,
                                n=agent.n)  # fmt: skip
                messages = build_messages(conversation, references, mixture.reference_prompt, agent.system_prompt)
                per_endpoint[agent.endpoint].append((target, messages))
            samples = [agent.max_tokens for agent in layer.agents for _ in range(agent.n)]
            references = [filler(tokens, f"{number}.{depth}.{i}") for i, tokens in enumerate(samples)]
        agg = mixture.aggregator
        endpoint = config.endpoints[agg.endpoint]
        target = Target(endpoint.base_url, endpoint.model, max_tokens, agg.temperature, trace=False)
        messages = build_messages(conversation, references, mixture.reference_prompt, agg.system_prompt)
        per_endpoint[agg.endpoint].append((target, messages))
    return per_endpoint


async def load(
    config: Config, work: dict[str, list[Any]], concurrency: int, warmup_s: float, window_s: float
) -> dict[str, Any]:
    urls = {name: metrics_url(config.endpoints[name].base_url) for name in work}
    records: dict[str, list[RequestRecord]] = {name: [] for name in work}
    gauges: dict[str, dict[str, list[float]]] = {name: {"running": [], "waiting": []} for name in work}
    limits = httpx.Limits(max_connections=concurrency * len(work) + len(work))
    async with httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(600.0, connect=10.0)) as client:
        origin = time.perf_counter()

        async def worker(name: str, calls: Iterator[Any]) -> None:
            while True:
                target, messages = next(calls)
                record = RequestRecord(name, "closed", float(concurrency), len(records[name]))
                records[name].append(await send(client, target, messages, record, origin))

        tasks = [asyncio.create_task(worker(name, itertools.cycle(queue)))
                 for name, queue in work.items() for _ in range(concurrency)]  # fmt: skip
        try:
            await asyncio.sleep(warmup_s)
            before = {name: await scrape(client, url) for name, url in urls.items()}
            closes = time.perf_counter() + window_s
            while (left := closes - time.perf_counter()) > 0:  # the gauges, once a second, through the window
                await asyncio.sleep(min(1.0, left))
                for name, url in urls.items():
                    figures = await scrape(client, url)
                    if isinstance(figures, dict):
                        for gauge in ("running", "waiting"):
                            if gauge in figures:
                                gauges[name][gauge].append(figures[gauge])
            after = {name: await scrape(client, url) for name, url in urls.items()}
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    per_engine: dict[str, Any] = {}
    for name in work:
        first, last = before[name], after[name]
        rate = prompt_rate = None
        if isinstance(first, dict) and isinstance(last, dict) and "generation_tokens" in first:
            rate = (last["generation_tokens"] - first["generation_tokens"]) / window_s
            if "prompt_tokens" in first and "prompt_tokens" in last:
                prompt_rate = (last["prompt_tokens"] - first["prompt_tokens"]) / window_s
        done = [r for r in records[name] if r.ok]
        per_engine[name] = {
            "url": urls[name],
            "generation_tokens_per_s": rate,
            "prompt_tokens_per_s": prompt_rate,  # prefill: how long the calls' prompts are matters
            "calls_completed": len(done),
            "errors": sum(1 for r in records[name] if not r.ok and r.error),
            "e2e_p50_s": summarize(done).e2e_s.p50 if done else None,
            "mean_running": _mean(gauges[name]["running"]),
            "mean_waiting": _mean(gauges[name]["waiting"]),
            "note": next((x for x in (first, last) if isinstance(x, str)), None),
        }
    rates = list({e["url"]: e["generation_tokens_per_s"] for e in per_engine.values()}.values())  # once per engine
    return {
        "warmup_s": warmup_s,
        "window_s": window_s,
        "concurrency_per_engine": concurrency,
        "generated_tokens_per_s": sum(rates) if None not in rates else None,
        "engines": per_engine,
    }


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--config", required=True)
    parser.add_argument("--mixture", required=True)
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=48, help="the aggregator's max_tokens (as the bench sends)")
    parser.add_argument("--concurrency", type=int, default=16, help="calls in flight per engine")
    parser.add_argument("--warmup", type=float, default=20.0, help="seconds of load before the window opens")
    parser.add_argument("--window", type=float, default=60.0, help="seconds over which the rates are measured")
    parser.add_argument("--dataset", default="builtin")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    if args.prompts < 1:
        parser.error("--prompts must be at least 1")
    try:
        config = load_config(args.config)
        mixture = config.mixtures.get(args.mixture)
        if mixture is None:
            raise MoaError(f"{args.config}: no mixture '{args.mixture}' (known: {', '.join(config.mixtures)})")
        conversations = load_conversations(args.dataset)
    except MoaError as exc:
        print(f"saturation.py: {exc}", file=sys.stderr)
        return 1
    conversations = [conversations[i % len(conversations)] for i in range(args.prompts)]
    work = calls(config, mixture, conversations, args.max_tokens)
    counts = {name: len(queue) for name, queue in work.items()}
    result = asyncio.run(load(config, work, args.concurrency, args.warmup, args.window))
    result.update(mixture=args.mixture, prompts=args.prompts, calls_per_cycle=counts)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    rates = ", ".join(f"{name} {e['generation_tokens_per_s'] or 0:.1f}" for name, e in result["engines"].items())
    print(f"saturation: {result['generated_tokens_per_s'] or 0:.1f} generated tok/s ({rates})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
