"""The pipeline's logic, driven through a fake `Caller` (plain async code, no HTTP)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from moa_local.config import MixtureConfig
from moa_local.errors import (
    BackendError,
    DeadlineError,
    EndpointStatusError,
    EndpointTimeout,
    InvalidRequest,
    PayloadTooLarge,
    QuorumError,
)
from moa_local.metrics import Metrics
from moa_local.mixture.events import Done, Event, LayerDone, Proposal, Token
from moa_local.mixture.pipeline import Pipeline
from moa_local.mixture.references import DEFAULT_REFERENCE_PROMPT, Message
from moa_local.mixture.spec import Overrides, RunSpec, Sampling
from moa_local.mixture.trace import AgentTrace

USER: list[Message] = [{"role": "user", "content": "What is 2 + 2?"}]
PROMPT_TOKENS = 10
TOKENS_PER_SAMPLE = 3


@dataclass
class Behaviour:
    """How one fake endpoint answers: after `delay_s`, `replies[i]` for sample i, or a failure.

    `queued_s` is a wait for a slot before that (the call's `attempts` stays 0);
    `times_out` fails the call with its own timeout after `delay_s`.
    """

    delay_s: float = 0.0
    fail: str | None = None
    replies: list[str] | None = None
    queued_s: float = 0.0
    times_out: bool = False


@dataclass
class Call:
    endpoint: str
    messages: list[Message]
    sampling: Sampling
    trace: AgentTrace
    cancelled: bool = False
    outcome: str | None = None  # the status the call ended with, as the endpoint counts it in its `finally`

    @property
    def system(self) -> str | None:
        first = self.messages[0] if self.messages else {}
        return str(first["content"]) if first.get("role") == "system" else None


@dataclass
class FakeCaller:
    """Stands in for the endpoint pool, and fills each AgentTrace as the pool does.

    The default reply of endpoint `e` is "e answer <k>.<i>": its k-th call, sample i.
    """

    behaviours: dict[str, Behaviour] = field(default_factory=dict)
    windows: dict[str, int] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)

    def context_window(self, endpoint: str) -> int | None:
        return self.windows.get(endpoint)

    def to(self, endpoint: str) -> list[Call]:
        return [call for call in self.calls if call.endpoint == endpoint]

    async def stream(
        self, endpoint: str, messages: list[Message], sampling: Sampling, trace: AgentTrace, order: float = 0.0
    ) -> AsyncGenerator[tuple[int, str], None]:
        call = Call(endpoint, messages, sampling, trace)
        self.calls.append(call)
        number = len(self.to(endpoint))
        behaviour = self.behaviours.get(endpoint, Behaviour())
        start = time.perf_counter()
        trace.finish_reasons = [None] * sampling.n
        try:
            await asyncio.sleep(behaviour.queued_s)
            trace.attempts = 1
            await asyncio.sleep(behaviour.delay_s)
            if behaviour.times_out:
                raise EndpointTimeout(endpoint, f"no complete answer within {behaviour.delay_s:g}s")
            if behaviour.fail is not None:
                raise EndpointStatusError(endpoint, f"engine answered 500: {behaviour.fail}", upstream_status=500)
            trace.prompt_tokens = PROMPT_TOKENS
            for i in range(sampling.n):
                text = behaviour.replies[i] if behaviour.replies else f"{endpoint} answer {number}.{i}"
                for position, word in enumerate(text.split(" ")):
                    if trace.ttft_s is None:
                        trace.ttft_s = time.perf_counter() - start
                    yield i, word if position == 0 else " " + word
                    trace.completion_tokens += 1
                trace.finish_reasons[i] = "stop"
            trace.status = "ok"
        except BackendError as exc:
            trace.status = "timeout" if isinstance(exc, EndpointTimeout) else "error"
            trace.error = exc.reason
            raise
        except (asyncio.CancelledError, GeneratorExit):
            call.cancelled = True
            if trace.status == "pending":
                trace.status = "cancelled"
            raise
        finally:
            trace.latency_s = time.perf_counter() - start
            call.outcome = trace.status


def mixture(*layers: Sequence[str | dict[str, Any]], aggregator: str = "agg", **options: Any) -> MixtureConfig:
    """Layers of agents, each agent an endpoint name or an agent dict; layer options via `min_ok=[...]` etc."""
    min_ok = options.pop("min_ok", [1] * len(layers))
    deadline = options.pop("deadline_s", [None] * len(layers))
    return MixtureConfig.model_validate(
        {
            "layers": [
                {
                    "agents": [{"endpoint": a} if isinstance(a, str) else a for a in agents],
                    "min_ok": min_ok[i],
                    "deadline_s": deadline[i],
                }
                for i, agents in enumerate(layers)
            ],
            "aggregator": {"endpoint": aggregator, "temperature": 0.3, "max_tokens": 100},
            **options,
        }
    )


@pytest.fixture
def metrics() -> Metrics:
    return Metrics(CollectorRegistry())


async def collect(
    caller: FakeCaller, spec: RunSpec | MixtureConfig, conversation: Sequence[Message] = USER,
    metrics: Metrics | None = None,
) -> tuple[list[Event], Done]:  # fmt: skip
    if isinstance(spec, MixtureConfig):
        spec = RunSpec.for_mixture("moa", spec)
    pipeline = Pipeline(caller, metrics or Metrics(CollectorRegistry()))
    events = [event async for event in pipeline.run(spec, conversation)]
    done = events[-1]
    assert isinstance(done, Done)
    return events, done


def references_in(system: str | None, instruction: str = DEFAULT_REFERENCE_PROMPT) -> list[str]:
    """The numbered answers of a reference block (one line each in these tests)."""
    assert system is not None and instruction in system
    lines = system[system.index(instruction) + len(instruction) :].strip("\n").split("\n")
    for number, line in enumerate(lines, start=1):
        assert line.startswith(f"{number}. "), lines
    return [line.split(". ", 1)[1] for line in lines]


def counter(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


# --- the method ---


async def test_one_proposer_layer() -> None:
    caller = FakeCaller()
    events, done = await collect(caller, mixture(["a", "b"]))
    assert [c.endpoint for c in caller.calls] == ["a", "b", "agg"]
    assert caller.to("a")[0].messages == USER and caller.to("b")[0].messages == USER
    agg = caller.to("agg")[0]
    assert agg.messages == [
        {"role": "system", "content": f"{DEFAULT_REFERENCE_PROMPT}\n1. a answer 1.0\n2. b answer 1.0"},
        *USER,
    ]
    assert done.answer == "agg answer 1.0"
    assert done.finish_reason == "stop"
    kinds = [type(e).__name__ for e in events]
    assert kinds == ["Proposal", "Proposal", "LayerDone", "Token", "Token", "Token", "Done"]
    assert "".join(e.text for e in events if isinstance(e, Token)) == done.answer


@pytest.mark.parametrize("count", [1, 2, 3])
async def test_layer_counts(count: int) -> None:
    caller = FakeCaller()
    _, done = await collect(caller, mixture(*[["a", "b"]] * count))
    assert len(caller.calls) == 2 * count + 1
    assert len(done.trace.layers) == count
    for layer in range(1, count + 1):
        a, b = caller.to("a")[layer - 1], caller.to("b")[layer - 1]
        if layer == 1:
            assert a.messages == USER and b.messages == USER
        else:  # the previous layer's answers, in agent order
            expected = [f"a answer {layer - 1}.0", f"b answer {layer - 1}.0"]
            assert references_in(a.system) == expected
            assert b.messages == a.messages
            assert a.messages[1:] == USER
    assert references_in(caller.to("agg")[0].system) == [f"a answer {count}.0", f"b answer {count}.0"]


async def test_self_moa_n_samples_in_one_request() -> None:
    caller = FakeCaller()
    _, done = await collect(caller, mixture([{"endpoint": "a", "n": 3}, "b"], min_ok=[4]))
    assert [c.sampling.n for c in caller.calls] == [3, 1, 1]
    assert references_in(caller.to("agg")[0].system) == [
        "a answer 1.0", "a answer 1.1", "a answer 1.2", "b answer 1.0",
    ]  # fmt: skip
    layer = done.trace.layers[0]
    assert layer.proposals_used == 4
    assert [agent.samples for agent in layer.agents] == [3, 1]


async def test_proposer_and_aggregator_sampling() -> None:
    caller = FakeCaller()
    config = mixture([{"endpoint": "a", "temperature": 0.9, "top_p": 0.5, "max_tokens": 64}])
    spec = RunSpec.for_mixture("moa", config, Overrides(temperature=0.1, max_tokens=7, stop=("END",), seed=3))
    await collect(caller, spec)
    assert caller.to("a")[0].sampling == Sampling(temperature=0.9, top_p=0.5, max_tokens=64, n=1)
    assert caller.to("agg")[0].sampling == Sampling(temperature=0.1, max_tokens=7, stop=("END",), seed=3)


async def test_aggregator_keeps_its_configured_sampling_without_overrides() -> None:
    caller = FakeCaller()
    await collect(caller, mixture(["a"]))
    assert caller.to("agg")[0].sampling == Sampling(temperature=0.3, max_tokens=100)


async def test_existing_system_message_and_multi_turn_history() -> None:
    history: list[Message] = [
        {"role": "system", "content": "Answer in French."},
        {"role": "user", "content": "2 + 2?"},
        {"role": "assistant", "content": "quatre"},
        {"role": "user", "content": "and 3 + 3?"},
    ]
    caller = FakeCaller()
    await collect(caller, mixture(["a", "b"], ["a"], reference_prompt="Synthesize these:"), history)
    assert caller.to("a")[0].messages == history  # layer 1: the conversation as sent
    for call in (caller.to("a")[1], caller.to("agg")[0]):
        assert call.messages[1:] == history[1:]
        assert call.system is not None and call.system.startswith("Answer in French.\n\nSynthesize these:\n1. ")
    assert references_in(caller.to("a")[1].system, "Synthesize these:") == ["a answer 1.0", "b answer 1.0"]
    assert references_in(caller.to("agg")[0].system, "Synthesize these:") == ["a answer 2.0"]


async def test_agent_system_prompts_come_first() -> None:
    caller = FakeCaller()
    config = mixture([{"endpoint": "a", "system_prompt": "You are terse."}], ["b"])
    config = config.model_copy(update={"aggregator": config.aggregator.model_copy(update={"system_prompt": "Judge."})})
    await collect(caller, config)
    assert caller.to("a")[0].messages == [{"role": "system", "content": "You are terse."}, *USER]
    assert caller.to("agg")[0].system == f"Judge.\n\n{DEFAULT_REFERENCE_PROMPT}\n1. b answer 1.0"


async def test_proposals_arrive_in_completion_order_references_in_agent_order() -> None:
    caller = FakeCaller({"a": Behaviour(delay_s=0.05)})
    events, _ = await collect(caller, mixture(["a", "b"]))
    assert [e.agent.endpoint for e in events if isinstance(e, Proposal)] == ["b", "a"]
    assert references_in(caller.to("agg")[0].system) == ["a answer 1.0", "b answer 1.0"]


async def test_passthrough_sends_the_conversation_untouched() -> None:
    caller = FakeCaller()
    spec = RunSpec.passthrough("a", Overrides(temperature=0.2, max_tokens=9), timeout_s=5)
    events, done = await collect(caller, spec)
    assert [c.messages for c in caller.calls] == [USER]
    assert caller.calls[0].sampling == Sampling(temperature=0.2, max_tokens=9)
    assert done.answer == "a answer 1.0"
    assert done.trace.layers == [] and done.trace.aggregator is not None
    assert not any(isinstance(e, Proposal | LayerDone) for e in events)


# --- failures ---


async def test_quorum_reached_despite_a_failure() -> None:
    caller = FakeCaller({"b": Behaviour(fail="boom")})
    events, done = await collect(caller, mixture(["a", "b", "c"], min_ok=[2]))
    assert references_in(caller.to("agg")[0].system) == ["a answer 1.0", "c answer 1.0"]
    layer = done.trace.layers[0]
    assert layer.proposals_used == 2
    assert [(a.endpoint, a.status, a.error) for a in layer.agents] == [
        ("a", "ok", None), ("b", "error", "engine answered 500: boom"), ("c", "ok", None),
    ]  # fmt: skip
    failed = [e for e in events if isinstance(e, Proposal) and e.agent.endpoint == "b"]
    assert failed[0].texts == []


async def test_quorum_missed_names_each_failed_endpoint_and_why() -> None:
    caller = FakeCaller({"a": Behaviour(fail="boom"), "b": Behaviour(fail="out of memory")})
    with pytest.raises(QuorumError) as caught:
        await collect(caller, mixture(["a", "b", "c"], min_ok=[2]))
    assert caught.value.status == 503
    assert str(caught.value) == (
        "moa: layer 1 got 1 of the 2 answers it needs — "
        "a: error (engine answered 500: boom); b: error (engine answered 500: out of memory)"
    )
    assert caller.to("agg") == []


async def test_quorum_missed_in_a_later_layer() -> None:
    caller = FakeCaller({"b": Behaviour(fail="boom")})
    with pytest.raises(QuorumError, match=r"^moa: layer 2 got 0 of the 1 answers it needs — b: error"):
        await collect(caller, mixture(["a"], ["b"]))
    assert [c.endpoint for c in caller.calls] == ["a", "b"]


async def test_empty_answers_do_not_count() -> None:
    caller = FakeCaller({"a": Behaviour(replies=["  "]), "b": Behaviour(fail="boom")})
    with pytest.raises(QuorumError) as caught:
        await collect(caller, mixture(["a", "b"]))
    assert str(caught.value) == "moa: layer 1 got 0 of the 1 answers it needs — b: error (engine answered 500: boom)"


async def test_deadline_proceeds_at_quorum_and_cancels_the_straggler() -> None:
    caller = FakeCaller({"slow": Behaviour(delay_s=5.0)})
    start = time.perf_counter()
    _, done = await collect(caller, mixture(["a", "b", "slow"], min_ok=[2], deadline_s=[0.2]))
    assert time.perf_counter() - start < 2.5  # not the 5 s of the slow agent
    assert references_in(caller.to("agg")[0].system) == ["a answer 1.0", "b answer 1.0"]
    straggler = done.trace.layers[0].agents[2]
    assert (straggler.status, straggler.error) == ("late", "cut off by the 0.2s deadline")
    assert caller.to("slow")[0].cancelled
    assert 0.2 <= done.trace.layers[0].duration_s < 2.5
    assert done.trace.layers[0].proposals_used == 2


async def test_deadline_below_quorum_is_a_504() -> None:
    caller = FakeCaller({"slow": Behaviour(delay_s=5.0), "b": Behaviour(fail="boom")})
    start = time.perf_counter()
    with pytest.raises(DeadlineError) as caught:
        await collect(caller, mixture(["a", "b", "slow"], min_ok=[2], deadline_s=[0.2]))
    assert time.perf_counter() - start < 2.5  # not the 5 s of the slow agent
    assert caught.value.status == 504
    assert str(caught.value) == (
        "moa: layer 1 got 1 of the 2 answers it needs — b: error (engine answered 500: boom); "
        "slow: late (cut off by the 0.2s deadline)"
    )
    assert caller.to("slow")[0].cancelled
    assert caller.to("agg") == []


async def test_request_timeout_caps_a_layer_without_deadline() -> None:
    caller = FakeCaller({"slow": Behaviour(delay_s=5.0)})
    spec = RunSpec.for_mixture("moa", mixture(["slow"]).model_copy(update={"timeout_s": 0.2}))
    with pytest.raises(DeadlineError, match=r"slow: late"):
        await collect(caller, spec)
    assert caller.to("slow")[0].cancelled


async def test_late_agents_name_the_request_deadline_when_it_comes_before_the_layers() -> None:
    caller = FakeCaller({"slow": Behaviour(delay_s=5.0)})
    config = mixture(["a", "slow"], min_ok=[2], deadline_s=[10]).model_copy(update={"timeout_s": 0.2})
    with pytest.raises(DeadlineError) as caught:
        await collect(caller, RunSpec.for_mixture("moa", config))
    assert str(caught.value) == (
        "moa: layer 1 got 1 of the 2 answers it needs — slow: late (cut off by the 0.2s request deadline)"
    )


async def test_request_timeout_caps_the_wait_for_the_aggregator() -> None:
    caller = FakeCaller({"agg": Behaviour(delay_s=5.0)})
    spec = RunSpec.for_mixture("moa", mixture(["a"]).model_copy(update={"timeout_s": 0.2}))
    start = time.perf_counter()
    with pytest.raises(DeadlineError) as caught:
        await collect(caller, spec)
    assert time.perf_counter() - start < 2.5  # not the 5 s of the slow aggregator
    assert str(caught.value) == "moa: no complete answer within 0.2s"
    agg = caller.to("agg")[0]
    assert agg.cancelled and (agg.trace.status, agg.trace.error) == ("timeout", "cut off by the 0.2s request deadline")


async def test_an_aggregator_cut_off_by_the_request_cap_ends_as_a_timeout_in_its_call_too() -> None:
    caller = FakeCaller({"agg": Behaviour(delay_s=5.0)})
    spec = RunSpec.for_mixture("moa", mixture(["a"]).model_copy(update={"timeout_s": 0.2}))
    with pytest.raises(DeadlineError):
        await collect(caller, spec)
    agg = caller.to("agg")[0]
    assert agg.cancelled and agg.outcome == "timeout"  # marked before the cancellation reached the call


async def test_a_passthrough_queued_past_the_backstop_is_ended_by_its_own_timeout() -> None:
    """Cap 1.2 s from the start; the call waits 0.6 s for a slot, then its own 1 s timeout fires (at 1.6 s)."""
    caller = FakeCaller({"a": Behaviour(queued_s=0.6, delay_s=1.0, times_out=True)})
    spec = RunSpec.passthrough("a", Overrides(), timeout_s=1.0, backstop_s=0.2)
    with pytest.raises(EndpointTimeout) as caught:
        await collect(caller, spec)
    assert caught.value.status == 502 and str(caught.value) == "a: no complete answer within 1s"
    assert caller.to("a")[0].outcome == "timeout" and not caller.to("a")[0].cancelled


async def test_a_passthrough_never_admitted_ends_at_its_cap() -> None:
    caller = FakeCaller({"a": Behaviour(queued_s=5.0)})
    spec = RunSpec.passthrough("a", Overrides(), timeout_s=0.2, backstop_s=0.1)
    with pytest.raises(DeadlineError, match=r"^a: no complete answer within 0.3s$"):
        await collect(caller, spec)
    call = caller.to("a")[0]
    assert call.cancelled and call.trace.attempts == 0 and call.outcome == "timeout"


async def test_a_passthrough_whose_call_never_ends_still_ends_at_the_moved_cap() -> None:
    caller = FakeCaller({"a": Behaviour(delay_s=5.0)})  # admitted at once; its own timeout never fires
    spec = RunSpec.passthrough("a", Overrides(), timeout_s=0.2, backstop_s=0.1)
    with pytest.raises(DeadlineError):
        await collect(caller, spec)
    call = caller.to("a")[0]
    assert call.cancelled and call.outcome == "timeout"


async def test_fail_fast_when_the_quorum_becomes_impossible() -> None:
    caller = FakeCaller({"a": Behaviour(fail="boom"), "b": Behaviour(fail="boom"), "slow": Behaviour(delay_s=5.0)})
    start = time.perf_counter()
    with pytest.raises(QuorumError) as caught:
        await collect(caller, mixture(["a", "b", "slow"], min_ok=[2], deadline_s=[10]))
    assert time.perf_counter() - start < 2.5  # not the 5 s of the slow agent
    assert caller.to("slow")[0].cancelled
    assert str(caught.value).endswith("; slow: cancelled")


async def test_a_prompt_that_cannot_fit_is_refused_and_nothing_else_runs_on() -> None:
    caller = FakeCaller({"b": Behaviour(delay_s=5.0)}, windows={"a": 64})
    conversation = [{"role": "user", "content": "x" * 600}]
    start = time.perf_counter()
    with pytest.raises(InvalidRequest) as caught:
        await collect(caller, mixture(["a", "b"]), conversation)
    assert time.perf_counter() - start < 2.5  # not the 5 s of the slow agent
    assert caught.value.status == 400
    assert "endpoint 'a' has a context window of 64 tokens" in str(caught.value)
    assert [c.endpoint for c in caller.calls] == ["b"] and caller.calls[0].cancelled


async def test_a_prompt_the_aggregator_cannot_hold_is_refused_before_any_call(metrics: Metrics) -> None:
    caller = FakeCaller(windows={"agg": 64})
    conversation = [{"role": "user", "content": "x" * 600}]
    with pytest.raises(PayloadTooLarge) as caught:
        await collect(caller, mixture(["a", "b"]), conversation, metrics)
    assert caught.value.status == 413 and caught.value.param == "messages"
    assert str(caught.value) == (
        "messages are about 358 tokens; endpoint 'agg' has a context window of 64 tokens, "
        "and at least 16 of them are kept for the answer"
    )  # the conversation (204) and one reference block: the fewest references the aggregator can get
    assert caller.calls == []  # no proposer's work wasted
    assert counter(metrics, "moa_requests_total", mixture="moa", outcome="rejected") == 1
    assert counter(metrics, "moa_requests_total", mixture="moa", outcome="error") == 0


async def test_a_passthrough_prompt_over_the_window_is_refused_before_the_call() -> None:
    caller = FakeCaller(windows={"a": 64})
    spec = RunSpec.passthrough("a", Overrides(), timeout_s=5)
    with pytest.raises(PayloadTooLarge, match=r"^messages are about 204 tokens; endpoint 'a' has a context window"):
        await collect(caller, spec, [{"role": "user", "content": "x" * 600}])
    assert caller.calls == []


async def test_references_trimmed_for_a_small_aggregator_window() -> None:
    long = " ".join(["word"] * 200)
    caller = FakeCaller({"a": Behaviour(replies=[long]), "b": Behaviour(replies=[long])}, windows={"agg": 256})
    _, done = await collect(caller, mixture(["a", "b"]))
    aggregator = done.trace.aggregator
    assert aggregator is not None
    assert aggregator.note is not None and aggregator.note.startswith("references trimmed to fit the 256-token window")
    refs = references_in(caller.to("agg")[0].system)
    assert all(r.endswith(" [...]") for r in refs) and len(refs[0]) == len(refs[1]) < len(long)
    assert done.trace.layers[0].agents[0].note is None


async def test_consumer_going_away_cancels_every_call() -> None:
    caller = FakeCaller({"a": Behaviour(delay_s=5.0), "b": Behaviour(delay_s=5.0)})
    pipeline = Pipeline(caller, Metrics(CollectorRegistry()))
    task = asyncio.create_task(_drain(pipeline.run(RunSpec.for_mixture("moa", mixture(["a", "b"])), USER)))
    for _ in range(500):
        if len(caller.calls) == 2:
            break
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert all(call.cancelled for call in caller.calls)
    assert [call.trace.status for call in caller.calls] == ["cancelled", "cancelled"]


async def _drain(events: AsyncGenerator[Event, None]) -> None:
    async with aclosing(events):
        async for _ in events:
            pass


# --- trace, usage, overhead, metrics ---


async def test_usage_sums_every_call() -> None:
    caller = FakeCaller()
    _, done = await collect(caller, mixture([{"endpoint": "a", "n": 2}, "b"], ["c"]))
    calls = 4  # a (two samples), b, c, agg
    samples = 5
    usage = done.trace.usage()
    assert usage.prompt_tokens == calls * PROMPT_TOKENS
    assert usage.completion_tokens == samples * TOKENS_PER_SAMPLE
    assert usage.as_openai() == {
        "prompt_tokens": calls * PROMPT_TOKENS,
        "completion_tokens": samples * TOKENS_PER_SAMPLE,
        "total_tokens": calls * PROMPT_TOKENS + samples * TOKENS_PER_SAMPLE,
    }


async def test_usage_counts_a_failed_layer_member_too() -> None:
    caller = FakeCaller({"b": Behaviour(fail="boom")})
    _, done = await collect(caller, mixture(["a", "b"]))
    assert done.trace.usage().prompt_tokens == 2 * PROMPT_TOKENS  # a and agg; b failed before any token


async def test_trace_contents() -> None:
    caller = FakeCaller({"a": Behaviour(delay_s=0.02), "b": Behaviour(fail="boom")})
    _, done = await collect(caller, mixture(["a", "b"], [{"endpoint": "c", "n": 2}]))
    trace = done.trace.as_dict()
    assert trace["model"] == "moa"
    assert [layer["index"] for layer in trace["layers"]] == [1, 2]
    assert [layer["proposals_used"] for layer in trace["layers"]] == [1, 2]
    a, b = trace["layers"][0]["agents"]
    assert (a["endpoint"], a["role"], a["status"], a["samples"], a["error"]) == ("a", "proposer", "ok", 1, None)
    assert a["latency_s"] >= 0.02 and a["ttft_s"] is not None and a["ttft_s"] >= 0.02
    assert (a["prompt_tokens"], a["completion_tokens"], a["finish_reasons"]) == (10, 3, ["stop"])
    assert (b["status"], b["error"], b["ttft_s"]) == ("error", "engine answered 500: boom", None)
    assert trace["layers"][1]["agents"][0]["samples"] == 2
    agg = trace["aggregator"]
    assert (agg["endpoint"], agg["role"], agg["status"]) == ("agg", "aggregator", "ok")
    assert trace["usage"] == done.trace.usage().as_openai()
    assert trace["duration_s"] >= trace["layers"][0]["duration_s"] + trace["layers"][1]["duration_s"]
    assert trace["ttft_s"] is not None and trace["ttft_s"] <= trace["duration_s"]
    text = json.dumps(trace)  # no prompt or answer text in a trace
    assert "answer 1.0" not in text and "2 + 2" not in text


async def test_overhead_is_wall_time_minus_the_critical_path() -> None:
    delays = {"a": 0.05, "b": 0.1, "c": 0.05, "agg": 0.05}
    caller = FakeCaller({name: Behaviour(delay_s=delay) for name, delay in delays.items()})
    _, done = await collect(caller, mixture(["a", "b"], ["c"]))
    trace = done.trace
    layers = trace.layers
    assert layers[0].critical_s == max(agent.latency_s for agent in layers[0].agents)
    assert layers[0].critical_s == layers[0].agents[1].latency_s  # b, the slowest
    assert trace.aggregator is not None
    critical = layers[0].critical_s + layers[1].critical_s + trace.aggregator.latency_s
    assert trace.critical_path_s == pytest.approx(critical)
    assert trace.overhead_s == pytest.approx(trace.duration_s - critical)
    assert 0 <= trace.overhead_s < 0.15  # not the agents' time: the critical path alone is >= 0.2 s
    assert trace.as_dict()["overhead_s"] == round(trace.overhead_s, 6)


async def test_request_counted_ok_when_the_consumer_stops_at_done(metrics: Metrics) -> None:
    caller = FakeCaller()
    events = Pipeline(caller, metrics).run(RunSpec.for_mixture("moa", mixture(["a"])), USER)
    async with aclosing(events):
        async for event in events:
            if isinstance(event, Done):
                duration = event.trace.duration_s
                break  # as the CLI and the gateway do: Done is the last event they need
    await asyncio.sleep(0.02)
    assert counter(metrics, "moa_requests_total", mixture="moa", outcome="ok") == 1
    assert counter(metrics, "moa_requests_total", mixture="moa", outcome="cancelled") == 0
    assert event.trace.duration_s == duration  # the answer's trace does not change after it was handed out


async def test_request_outcomes_counted(metrics: Metrics) -> None:
    caller = FakeCaller({"b": Behaviour(fail="boom"), "slow": Behaviour(delay_s=5)})
    await collect(caller, mixture(["a"]), metrics=metrics)
    with pytest.raises(QuorumError):
        await collect(caller, mixture(["b"]), metrics=metrics)
    with pytest.raises(DeadlineError):
        await collect(caller, mixture(["slow"], deadline_s=[0.05]), metrics=metrics)
    assert counter(metrics, "moa_requests_total", mixture="moa", outcome="ok") == 1
    assert counter(metrics, "moa_requests_total", mixture="moa", outcome="error") == 1
    assert counter(metrics, "moa_requests_total", mixture="moa", outcome="timeout") == 1
    assert counter(metrics, "moa_overhead_seconds_count", mixture="moa") == 1
    assert counter(metrics, "moa_layer_duration_seconds_count", mixture="moa", layer="1") == 3  # failed ones too


async def test_quorum_miss_counted_per_layer(metrics: Metrics) -> None:
    caller = FakeCaller({"b": Behaviour(fail="boom")})
    with pytest.raises(QuorumError):
        await collect(caller, mixture(["a"], ["b"]), metrics=metrics)
    assert counter(metrics, "moa_quorum_misses_total", mixture="moa", layer="2") == 1
    assert counter(metrics, "moa_quorum_misses_total", mixture="moa", layer="1") == 0
