"""The method's reference pattern, on the same engines: one prompt at a time, layer after layer.

This is how the reference implementation runs a mixture (its `bot.py` and
`utils.py`): for each prompt, call each proposer in turn with a blocking
request, collect the answers, inject them as references, call the next
layer's proposers the same way, then stream the aggregator's answer; only
then start the next prompt. It is written here faithfully (blocking HTTP,
sequential calls, no overlap) and pointed at the engines directly, with the
same mixture, prompts, references and token limits as the gateway run, so
that the only difference is the scheduling.

    python bench/reference_moa.py --config bench/cpu-bench.yaml --mixture moa-bench \
        --prompts 6 --max-tokens 48 --out bench-out/reference.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from moa_local.bench.dataset import load_conversations
from moa_local.bench.engines import parse
from moa_local.config import Config, MixtureConfig, SamplingConfig, load_mixture
from moa_local.errors import MoaError
from moa_local.mixture.references import build_messages
from moa_local.urls import metrics_url


def call(client: httpx.Client, config: Config, agent: SamplingConfig, messages: list[dict[str, Any]],
         max_tokens: int, stream: bool) -> tuple[str, int]:  # fmt: skip
    """One blocking chat completion; the answer and its completion tokens."""
    endpoint = config.endpoints[agent.endpoint]
    body: dict[str, Any] = {"model": endpoint.model, "messages": messages, "max_tokens": max_tokens,
                            "temperature": agent.temperature}  # fmt: skip
    url = f"{endpoint.base_url}/chat/completions"
    if not stream:  # the reference's proposers: a plain POST, the whole answer at once
        response = client.post(url, json=body)
        response.raise_for_status()
        data = response.json()
        return data["choices"][0]["message"]["content"] or "", int(data["usage"]["completion_tokens"])
    body.update(stream=True, stream_options={"include_usage": True})  # the reference's aggregator: streamed
    parts: list[str] = []
    tokens = 0
    with client.stream("POST", url, json=body) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data:") or line.strip() == "data: [DONE]":
                continue
            event = json.loads(line[5:])
            for choice in event.get("choices") or ():
                parts.append((choice.get("delta") or {}).get("content") or "")
            if event.get("usage"):
                tokens = int(event["usage"]["completion_tokens"])
    return "".join(parts), tokens


def engine_counters(client: httpx.Client, config: Config) -> dict[str, float]:
    totals: dict[str, float] = {}
    for name, endpoint in config.endpoints.items():
        try:
            figures = parse(client.get(metrics_url(endpoint.base_url), timeout=5).text)
        except (httpx.HTTPError, ValueError):
            continue
        totals[name] = figures.get("generation_tokens", 0.0)
    return totals


def measure(
    client: httpx.Client, config: Config, mixture: MixtureConfig, conversations: list[Any], max_tokens: int
) -> dict[str, Any]:
    """Run the prompts one after the other; the figures measured."""
    per_prompt: list[dict[str, Any]] = []
    before = engine_counters(client, config)
    start = time.perf_counter()
    for conversation in conversations:
        began = time.perf_counter()
        generated = 0
        references: list[str] = []
        for layer in mixture.layers:
            answers = []
            for agent in layer.agents:  # one after the other, as the reference does
                for _ in range(agent.n):
                    messages = build_messages(conversation, references, mixture.reference_prompt, agent.system_prompt)
                    text, tokens = call(client, config, agent, messages, agent.max_tokens, stream=False)
                    answers.append(text.strip())
                    generated += tokens
            references = answers
        messages = build_messages(conversation, references, mixture.reference_prompt, mixture.aggregator.system_prompt)
        text, tokens = call(client, config, mixture.aggregator, messages, max_tokens, stream=True)
        generated += tokens
        per_prompt.append({"latency_s": time.perf_counter() - began, "generated_tokens": generated,
                           "answer_tokens": tokens})  # fmt: skip
        print(f"prompt {len(per_prompt)}/{len(conversations)}: {per_prompt[-1]['latency_s']:.1f}s", file=sys.stderr)
    wall = time.perf_counter() - start
    after = engine_counters(client, config)
    generated = sum(p["generated_tokens"] for p in per_prompt)
    engine_tokens = sum(after.get(name, 0.0) - value for name, value in before.items())
    return {
        "prompts": len(per_prompt),
        "wall_s": wall,
        "requests_per_s": len(per_prompt) / wall,
        "generated_tokens": generated,
        "generated_tokens_per_s": generated / wall,
        "answer_tokens_per_s": sum(p["answer_tokens"] for p in per_prompt) / wall,
        "engine_generated_tokens_per_s": engine_tokens / wall if before else None,
        "latency_s": [p["latency_s"] for p in per_prompt],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--config", required=True)
    parser.add_argument("--mixture", required=True)
    parser.add_argument("--prompts", type=int, default=6, help="how many prompts, one after the other")
    parser.add_argument("--max-tokens", type=int, default=48, help="the aggregator's max_tokens (as the bench sends)")
    parser.add_argument("--dataset", default="builtin")
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    if args.prompts < 1:
        parser.error("--prompts must be at least 1")
    try:
        config, mixture = load_mixture(args.config, args.mixture)
        conversations = load_conversations(args.dataset)[: args.prompts]
        with httpx.Client(timeout=args.timeout) as client:
            figures = measure(client, config, mixture, conversations, args.max_tokens)
    except MoaError as exc:
        print(f"reference_moa.py: {exc}", file=sys.stderr)
        return 1
    except httpx.HTTPError as exc:
        print(f"reference_moa.py: {exc} ({type(exc).__name__})", file=sys.stderr)
        return 1
    pattern = "one prompt at a time, proposers one after the other, then the aggregator"
    result = {"pattern": pattern, "mixture": args.mixture, **figures}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"reference pattern: {result['generated_tokens_per_s']:.1f} generated tok/s, "
          f"{result['wall_s'] / result['prompts']:.1f}s per answer", file=sys.stderr)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
