"""The engines' saturated generation throughput, for the calls a mixture makes.

For a set of prompts, build every call the mixture would make (each
proposer's, each layer's, the aggregator's; references are stand-ins as
long as real answers, different for every prompt so that the engines'
prefix cache gains nothing a real run would not), then keep every engine
busy with its own share of those calls, `--concurrency` in flight each,
going round them again and again, with nothing waiting on anything else.
Each round builds its calls anew with fresh stand-ins, and all of an
engine's workers draw from one stream: replaying a prompt would let the
prefix cache skip its prefill, which a real batch never gets (measured on
Qwen aggregating: 15.4 generated tok/s when the calls repeat, 8.4 when
they do not). After a warm-up, each engine's generated-token counter
(`/metrics`) is read over a fixed window: each engine's saturated rate
for these calls, and their sum; its running and waiting requests are
sampled once a second meanwhile, and its prefix-cache hit rate over the
window is kept. The calls still running when the window closes are
cancelled (closing the stream makes vLLM drop them).

With `--batch N`, the calls of a batch of N prompts then go straight to
the engines, all at once, each endpoint at most its `max_concurrency` in
flight: the engines' throughput for exactly that batch's work, with the
mixture's dependencies (a layer waits for the one before) taken away.
That is the ceiling the gateway's batch is judged against. The window's
rates are each engine's pace while every engine is loaded, which is not
its pace in a batch whose work leaves one engine idle part of the time
(measured on the balanced lineup: Qwen 8.4 tok/s while SmolLM2 runs flat
out, 10.1 in the gateway's batch, where SmolLM2 idles three quarters of
the time).
`bench/targets.py` compares the gateway's batch run against it. With
`--window 0` there is no saturation window (nor its warm-up): only the
direct batch runs, as `bench/batch.sh` needs it.

    python bench/saturation.py --config bench/cpu-bench.yaml --mixture moa-bench \
        --prompts 32 --max-tokens 48 --batch 32 --out bench-out/saturation.json
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

from moa_local.bench.client import Target, send
from moa_local.bench.dataset import BUILTIN, load_conversations
from moa_local.bench.engines import scrape
from moa_local.bench.stats import RequestRecord, summarize
from moa_local.config import Config, MixtureConfig, load_mixture
from moa_local.errors import MoaError
from moa_local.mixture.references import build_messages
from moa_local.urls import metrics_url

WORDS = sorted({word.strip(".,?!'").lower() for prompt in BUILTIN for word in prompt.split()} - {""})


# Tokens per word of WORDS, measured with both CPU engines' tokenizers (vLLM's /tokenize): 1.08 and 1.09.
TOKENS_PER_WORD = 1.08


def filler(tokens: int, seed: str) -> str:
    """A stand-in for one proposer's answer of about `tokens` tokens; its words depend on `seed`."""
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) for _ in range(max(1, round(tokens / TOKENS_PER_WORD))))


def calls(
    config: Config, mixture: MixtureConfig, conversations: list[Any], max_tokens: int, tag: str = ""
) -> dict[str, list[Any]]:
    """Per endpoint: (target, messages) of every call the mixture makes for these prompts; the stand-in
    references depend on `tag`, so calls built with different tags share no reference text."""
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
            references = [filler(tokens, f"{tag}.{number}.{depth}.{i}") for i, tokens in enumerate(samples)]
        agg = mixture.aggregator
        endpoint = config.endpoints[agg.endpoint]
        target = Target(endpoint.base_url, endpoint.model, max_tokens, agg.temperature, trace=False)
        messages = build_messages(conversation, references, mixture.reference_prompt, agg.system_prompt)
        per_endpoint[agg.endpoint].append((target, messages))
    return per_endpoint


def rounds(
    config: Config, mixture: MixtureConfig, conversations: list[Any], max_tokens: int, tag: str = ""
) -> dict[str, Iterator[Any]]:
    """Per endpoint: one endless stream of its calls, shared by all its workers, each round built anew."""

    def stream(name: str) -> Iterator[Any]:
        for round_ in itertools.count():
            yield from calls(config, mixture, conversations, max_tokens, f"{tag}.{round_}")[name]

    return {name: stream(name) for name in calls(config, mixture, conversations, max_tokens)}


async def load(
    config: Config, work: dict[str, Iterator[Any]], concurrency: int, warmup_s: float, window_s: float
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

        # One stream per engine, shared: each call goes out once, never the same prompt from every worker.
        tasks = [asyncio.create_task(worker(name, queue)) for name, queue in work.items() for _ in range(concurrency)]
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
        figures = (first, last) if isinstance(first, dict) and isinstance(last, dict) else None
        generated, prompt = _delta(figures, "generation_tokens"), _delta(figures, "prompt_tokens")
        hits, queries = _delta(figures, "prefix_hits"), _delta(figures, "prefix_queries")
        rate = prompt_rate = hit_rate = None
        if generated is not None:
            rate = generated / window_s
            prompt_rate = prompt / window_s if prompt is not None else None
            hit_rate = hits / queries if hits is not None and queries is not None and queries > 0 else None
        done = [r for r in records[name] if r.ok]
        per_engine[name] = {
            "url": urls[name],
            "generation_tokens_per_s": rate,
            "prompt_tokens_per_s": prompt_rate,  # prefill: how long the calls' prompts are matters
            "prefix_cache_hit_rate": hit_rate,  # prefill the cache spared
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


async def direct_batch(config: Config, work: dict[str, list[Any]]) -> dict[str, Any]:
    """The batch's own calls sent straight to the engines, all at once, no layer waiting on another.

    Each endpoint keeps at most its `max_concurrency` in flight, as the gateway does, and takes its calls
    in order. The engines' generated tokens (counter deltas, every sample of an `n` call) over the time
    until the last call ends: the engines' throughput for exactly the batch's work, with nothing but the
    mixture's dependencies (a layer waits for the one before it) taken away."""
    urls = {metrics_url(config.endpoints[name].base_url): name for name in work}  # one per engine
    limits = httpx.Limits(max_connections=sum(config.endpoints[name].max_concurrency for name in work) + len(urls))
    async with httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(600.0, connect=10.0)) as client:
        before = {url: await scrape(client, url) for url in urls}
        origin = time.perf_counter()
        records: list[RequestRecord] = []

        async def endpoint(name: str, queue: list[Any]) -> None:
            slots = asyncio.Semaphore(config.endpoints[name].max_concurrency)

            async def one(number: int, target: Target, messages: Any) -> None:
                async with slots:
                    record = RequestRecord(name, "closed", float(len(queue)), number)
                    records.append(await send(client, target, messages, record, origin))

            await asyncio.gather(*(one(i, target, messages) for i, (target, messages) in enumerate(queue)))

        await asyncio.gather(*(endpoint(name, queue) for name, queue in work.items()))
        wall_s = time.perf_counter() - origin
        after = {url: await scrape(client, url) for url in urls}
    engines: dict[str, Any] = {}
    for url, name in urls.items():
        first, last = before[url], after[url]
        figures = (first, last) if isinstance(first, dict) and isinstance(last, dict) else None
        engines[name] = {
            "url": url,
            "generated_tokens": _delta(figures, "generation_tokens"),
            "prompt_tokens": _delta(figures, "prompt_tokens"),  # the stand-ins' length shows here
            "note": next((x for x in (first, last) if isinstance(x, str)), None),
        }
    tokens = [e["generated_tokens"] for e in engines.values()]
    return {
        "calls": {name: len(queue) for name, queue in work.items()},
        "errors": sum(1 for r in records if not r.ok),
        "wall_s": wall_s,
        "generated_tokens_per_s": sum(tokens) / wall_s if None not in tokens else None,
        "engines": engines,
    }


def _delta(figures: tuple[dict[str, float], dict[str, float]] | None, key: str) -> float | None:
    if figures is None or key not in figures[0] or key not in figures[1]:
        return None
    return figures[1][key] - figures[0][key]


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
    parser.add_argument("--window", type=float, default=60.0,
                        help="seconds over which the rates are measured (0: no window, only --batch)")  # fmt: skip
    parser.add_argument(
        "--batch",
        type=int,
        default=0,
        help="also send a batch of this many prompts' calls straight to the engines (0: none)",
    )
    parser.add_argument("--dataset", default="builtin")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    if args.prompts < 1 or args.batch < 0 or args.window < 0:
        parser.error("--prompts must be at least 1, --batch and --window at least 0")
    if args.window == 0 and args.batch == 0:
        parser.error("--window 0 measures nothing without --batch")
    try:
        config, mixture = load_mixture(args.config, args.mixture)
        conversations = load_conversations(args.dataset)
    except MoaError as exc:
        print(f"saturation.py: {exc}", file=sys.stderr)
        return 1
    batch = [conversations[i % len(conversations)] for i in range(args.batch)]  # as `moa-local bench` takes them
    conversations = [conversations[i % len(conversations)] for i in range(args.prompts)]
    counts = {name: len(queue) for name, queue in calls(config, mixture, conversations, args.max_tokens).items()}
    run = f"{random.getrandbits(64):x}"  # stand-ins no earlier run on these engines can have left in their cache
    result: dict[str, Any] = {}
    if args.window > 0:
        result = asyncio.run(load(config, rounds(config, mixture, conversations, args.max_tokens, run),
                                  args.concurrency, args.warmup, args.window))  # fmt: skip
    result.update(mixture=args.mixture, prompts=args.prompts, calls_per_cycle=counts)
    if batch:  # after the window's load, whose calls are cancelled by then
        work = calls(config, mixture, batch, args.max_tokens, f"{run}.batch")  # none of the window's stand-ins
        result["direct_batch"] = asyncio.run(direct_batch(config, work))
        result["direct_batch"]["prompts"] = args.batch
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    if args.window > 0:
        rates = ", ".join(f"{name} {e['generation_tokens_per_s'] or 0:.1f}" for name, e in result["engines"].items())
        print(f"saturation: {result['generated_tokens_per_s'] or 0:.1f} generated tok/s ({rates})", file=sys.stderr)
    if batch:
        direct = result["direct_batch"]
        print(f"direct batch of {args.batch} prompts: {direct['generated_tokens_per_s'] or 0:.1f} generated tok/s "
              f"in {direct['wall_s']:.0f} s, {direct['errors']} errors", file=sys.stderr)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
