"""The engines' saturated generation throughput: a mixture's calls with no layer dependency.

For a batch of prompts, build every call the mixture would make (each
proposer's, each layer's, the aggregator's, with references of the same
size as real answers stand-ins) and send them all straight to the engines,
`--concurrency` in flight per engine, with nothing waiting on anything
else. What the engines then generate per second is the ceiling a mixture
scheduler can approach on this machine; `bench/run_all.sh` compares the
gateway's batch run against it.

    python bench/saturation.py --config bench/cpu-bench.yaml --mixture moa-bench \
        --prompts 32 --max-tokens 48 --out bench-out/saturation.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx

from moa_local.bench_client import Target, send
from moa_local.bench_dataset import load_conversations
from moa_local.bench_engines import EngineWatch
from moa_local.bench_stats import RequestRecord, summarize
from moa_local.config import Config, MixtureConfig, load_config
from moa_local.references import build_messages

# A stand-in for one proposer's answer: about as long as a real one of `tokens` tokens.
FILLER = ("Here is a careful answer: the main points come first, then a short example, "
          "and finally a note on the limits of the approach and what to read next. ")  # fmt: skip


def filler(tokens: int) -> str:
    text = FILLER * (1 + tokens * 4 // len(FILLER))
    return text[: tokens * 4]


def calls(config: Config, mixture: MixtureConfig, conversations: list[Any], max_tokens: int) -> dict[str, list[Any]]:
    """Per endpoint: (target, messages) of every call the mixture makes for these prompts."""
    per_endpoint: dict[str, list[Any]] = defaultdict(list)
    for conversation in conversations:
        references: list[str] = []
        for layer in mixture.layers:
            for agent in layer.agents:
                endpoint = config.endpoints[agent.endpoint]
                target = Target(endpoint.base_url, endpoint.model, agent.max_tokens, agent.temperature, trace=False)
                messages = build_messages(conversation, references, mixture.reference_prompt, agent.system_prompt)
                per_endpoint[agent.endpoint] += [(target, messages)] * agent.n
            references = [filler(agent.max_tokens) for agent in layer.agents for _ in range(agent.n)]
        agg = mixture.aggregator
        endpoint = config.endpoints[agg.endpoint]
        target = Target(endpoint.base_url, endpoint.model, max_tokens, agg.temperature, trace=False)
        messages = build_messages(conversation, references, mixture.reference_prompt, agg.system_prompt)
        per_endpoint[agg.endpoint].append((target, messages))
    return per_endpoint


async def load(config: Config, work: dict[str, list[Any]], concurrency: int, limit_s: float) -> dict[str, Any]:
    urls = tuple(config.endpoints[name].base_url for name in work)
    records: dict[str, list[RequestRecord]] = {name: [] for name in work}
    limits = httpx.Limits(max_connections=concurrency * len(work))
    client = httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(300.0, connect=10.0))
    async with client, EngineWatch(urls) as watch:
        origin = time.perf_counter()
        stop_at = origin + limit_s

        async def worker(name: str, queue: list[Any]) -> None:
            while queue and time.perf_counter() < stop_at:
                target, messages = queue.pop(0)
                record = RequestRecord(name, "closed", float(concurrency), len(records[name]))
                records[name].append(await send(client, target, messages, record, origin))

        await asyncio.gather(*(worker(name, queue) for name, queue in work.items() for _ in range(concurrency)))
        wall = time.perf_counter() - origin
    per_engine = {}
    for name, mine in records.items():
        summary = summarize(mine, wall)
        per_engine[name] = {"calls": summary.requests, "errors": summary.errors,
                            "generated_tokens_per_s": summary.generated_tokens_per_s,
                            "ttft_p50_s": summary.ttft_s.p50, "e2e_p50_s": summary.e2e_s.p50}  # fmt: skip
    engines = watch.figures(wall)
    engine_rate = [e["generation_tokens_per_s"] for e in engines]
    return {
        "wall_s": wall,
        "concurrency_per_engine": concurrency,
        "generated_tokens_per_s": sum(e["generated_tokens_per_s"] for e in per_engine.values()),
        "engine_generated_tokens_per_s": sum(engine_rate) if None not in engine_rate else None,
        "per_endpoint": per_engine,
        "engines": engines,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--config", required=True)
    parser.add_argument("--mixture", required=True)
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=48, help="the aggregator's max_tokens (as the bench sends)")
    parser.add_argument("--concurrency", type=int, default=16, help="calls in flight per engine")
    parser.add_argument("--duration-limit", type=float, default=120.0)
    parser.add_argument("--dataset", default="builtin")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    config = load_config(args.config)
    conversations = load_conversations(args.dataset)
    conversations = [conversations[i % len(conversations)] for i in range(args.prompts)]
    work = calls(config, config.mixtures[args.mixture], conversations, args.max_tokens)
    counts = {name: len(queue) for name, queue in work.items()}
    result = asyncio.run(load(config, work, args.concurrency, args.duration_limit))
    result.update(mixture=args.mixture, prompts=args.prompts, calls=counts)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"saturation: {result['generated_tokens_per_s']:.1f} generated tok/s (client), "
          f"{result['engine_generated_tokens_per_s'] or 0:.1f} (engines)", file=sys.stderr)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
