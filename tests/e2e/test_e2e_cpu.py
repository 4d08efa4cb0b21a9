"""End to end on the real CPU engines: the MoA pipeline over two vLLM servers.

The models are tiny, so nothing here asserts what they say beyond "non-empty
text"; the assertions are about structure, usage (checked against the
engines' own token counters), the trace, and survival of a dead engine.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from moa_local.config import Config
from moa_local.engines.pool import EndpointPool
from moa_local.metrics import Metrics
from moa_local.mixture.events import Done, Event, LayerDone, Proposal, Token
from moa_local.mixture.pipeline import Pipeline
from moa_local.mixture.references import Message
from moa_local.mixture.spec import Overrides, RunSpec, Sampling
from moa_local.mixture.trace import AgentTrace
from tests.support.engine_fixtures import CpuStack

pytestmark = pytest.mark.engine
QUESTION = "Name two colours of the rainbow."


class RecordingPool:
    """The real endpoint pool, noting which messages each call sent (no mocking: calls go out)."""

    def __init__(self, pool: EndpointPool) -> None:
        self.pool = pool
        self.sent: list[tuple[str, str, list[Message]]] = []

    def stream(
        self, endpoint: str, messages: list[Message], sampling: Sampling, trace: AgentTrace, order: float = 0.0
    ) -> AsyncGenerator[tuple[int, str], None]:
        self.sent.append((endpoint, trace.role, messages))
        return self.pool.stream(endpoint, messages, sampling, trace, order)

    def context_window(self, endpoint: str) -> int | None:
        return self.pool.context_window(endpoint)


async def run_mixture(
    config: Config, mixture: str, conversation: list[Message], max_tokens: int = 48
) -> tuple[list[Event], RecordingPool]:
    spec = RunSpec.for_mixture(mixture, config.mixtures[mixture], Overrides(max_tokens=max_tokens))
    events: list[Event] = []
    async with EndpointPool(config.endpoints, Metrics()) as pool:
        recording = RecordingPool(pool)
        async with aclosing(Pipeline(recording, Metrics()).run(spec, conversation)) as run:
            async for event in run:
                events.append(event)
    return events, recording


def engine_counters(url: str) -> dict[str, float]:
    """The engine's own prompt/generation token totals, from its /metrics."""
    text = httpx.get(url.removesuffix("/v1") + "/metrics", timeout=10).text
    totals = {"prompt": 0.0, "generation": 0.0}
    for family in text_string_to_metric_families(text):
        for kind in totals:
            if family.name == f"vllm:{kind}_tokens":
                totals[kind] += sum(s.value for s in family.samples if s.name.endswith("_total"))
    return totals


def done_of(events: list[Event]) -> Done:
    done = [event for event in events if isinstance(event, Done)]
    assert len(done) == 1
    return done[0]


async def test_two_layer_mixture_streams_an_answer_with_usage_matching_the_engines(cpu_stack: CpuStack) -> None:
    config = cpu_stack.config
    before = {name: engine_counters(cpu_stack.base_url(name)) for name in config.endpoints}
    events, _ = await run_mixture(config, "moa-cpu", [{"role": "user", "content": QUESTION}])

    done = done_of(events)
    tokens = [event for event in events if isinstance(event, Token)]
    assert len(tokens) > 1, "the answer should arrive token by token"
    assert "".join(t.text for t in tokens) == done.answer and done.answer.strip()
    proposals = [event for event in events if isinstance(event, Proposal)]
    assert sorted(p.agent.endpoint for p in proposals) == ["qwen", "smollm2"]
    assert all(p.texts and p.texts[0].strip() for p in proposals)
    assert [e.layer.proposals_used for e in events if isinstance(e, LayerDone)] == [2]

    trace = done.trace
    agents = [*trace.layers[0].agents, trace.aggregator]
    assert all(agent is not None and agent.status == "ok" for agent in agents), trace.as_dict()
    assert all(agent is not None and agent.prompt_tokens > 0 and agent.completion_tokens > 0 for agent in agents)
    print(f"\nmoa-cpu: first token after {trace.ttft_s:.2f}s, done in {trace.duration_s:.2f}s, "
          f"overhead {trace.overhead_s * 1000:.1f} ms")  # fmt: skip

    # The usage we report is what the engines themselves counted, call for call. vLLM updates its
    # counters in its output loop, beside the stream it answers on: read them until they settle.
    usage = trace.usage()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while True:
        after = {name: engine_counters(cpu_stack.base_url(name)) for name in config.endpoints}
        generated = sum(after[n]["generation"] - before[n]["generation"] for n in config.endpoints)
        prompted = sum(after[n]["prompt"] - before[n]["prompt"] for n in config.endpoints)
        if (generated, prompted) == (usage.completion_tokens, usage.prompt_tokens) or loop.time() > deadline:
            break
        await asyncio.sleep(0.2)
    assert usage.completion_tokens == generated
    assert usage.prompt_tokens == prompted


async def test_second_turn_sees_the_first_answer(cpu_stack: CpuStack) -> None:
    first_events, _ = await run_mixture(cpu_stack.config, "moa-cpu", [{"role": "user", "content": QUESTION}])
    first = done_of(first_events)
    history: list[dict[str, Any]] = [
        {"role": "user", "content": QUESTION},
        {"role": "assistant", "content": first.answer},
        {"role": "user", "content": "Now name one more."},
    ]
    events, recording = await run_mixture(cpu_stack.config, "moa-cpu", history)
    done = done_of(events)
    assert done.answer.strip()
    for endpoint, role, messages in recording.sent:
        turns = [m for m in messages if m["role"] != "system"]
        assert turns == history, f"{endpoint} ({role}) did not get the whole history"
    # The engines counted the longer prompt: history adds at least the first answer's tokens.
    first_proposer = first.trace.layers[0].agents[0]
    second_proposer = next(a for a in done.trace.layers[0].agents if a.endpoint == first_proposer.endpoint)
    assert second_proposer.prompt_tokens > first_proposer.prompt_tokens + 5


async def test_a_dead_engine_is_left_out_and_reported(cpu_stack: CpuStack) -> None:
    cpu_stack.stop_endpoint("smollm2")
    try:
        events, _ = await run_mixture(cpu_stack.config, "moa-cpu", [{"role": "user", "content": QUESTION}])
        done = done_of(events)
        assert done.answer.strip()
        layer = done.trace.layers[0]
        assert layer.proposals_used == 1
        dead = next(agent for agent in layer.agents if agent.endpoint == "smollm2")
        assert dead.status == "error" and dead.error and "connect" in dead.error, dead
        assert next(a for a in layer.agents if a.endpoint == "qwen").status == "ok"

        command = [sys.executable, "-m", "moa_local", "check", "--config", str(cpu_stack.config_path)]
        check = await asyncio.to_thread(subprocess.run, command, capture_output=True, text=True, timeout=60)
        assert check.returncode == 1
        lines = check.stdout.splitlines()
        assert any("smollm2" in line and "DOWN" in line for line in lines), check.stdout
        assert any("qwen" in line and " up " in line for line in lines), check.stdout
        assert "Traceback" not in check.stderr
    finally:
        cpu_stack.start_endpoint("smollm2")
