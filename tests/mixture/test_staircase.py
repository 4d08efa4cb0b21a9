"""Early and staircase aggregation, driven through a scripted `Caller`: the test decides when each piece arrives."""

from __future__ import annotations

import asyncio
from contextlib import aclosing
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from moa_local.config import MixtureConfig
from moa_local.errors import DeadlineError, InvalidRequest, QuorumError
from moa_local.metrics import Metrics
from moa_local.mixture.events import Done, Event, Proposal, Token
from moa_local.mixture.pipeline import Pipeline
from moa_local.mixture.references import Message
from moa_local.mixture.spec import Overrides, RunSpec, Sampling
from moa_local.mixture.staircase import ChunkLog, partial_instruction
from moa_local.mixture.streams import SampleStream
from moa_local.mixture.trace import AgentTrace
from tests.mixture.scripted import ScriptedCall, ScriptedCaller, end, fail, piece, words
from tests.support.calls import until

USER: list[Message] = [{"role": "user", "content": "What is 2 + 2?"}]
HEAD = partial_instruction(None)


def mixture(*agents: str | dict[str, Any], layer: dict[str, Any] | None = None, **aggregator: Any) -> MixtureConfig:
    """One proposer layer and the aggregator 'agg' (max_tokens 100) starting in staircase steps unless told."""
    options = {"timeout_s": aggregator.pop("timeout_s")} if "timeout_s" in aggregator else {}
    return MixtureConfig.model_validate(
        {
            "layers": [{"agents": [{"endpoint": a} if isinstance(a, str) else a for a in agents], **(layer or {})}],
            "aggregator": {
                "endpoint": "agg", "temperature": 0.3, "max_tokens": 100, "start": "staircase", **aggregator,
            },
            **options,
        }
    )


class Run:
    """The pipeline running in a task of its own, its events collected as they come."""

    def __init__(
        self, caller: ScriptedCaller, spec: MixtureConfig | RunSpec, metrics: Metrics | None = None,
        conversation: list[Message] = USER,
    ) -> None:  # fmt: skip
        if isinstance(spec, MixtureConfig):
            spec = RunSpec.for_mixture("moa", spec)
        self.metrics = metrics or Metrics(CollectorRegistry())
        self.events: list[Event] = []
        self.task = asyncio.create_task(self._drain(Pipeline(caller, self.metrics).run(spec, conversation)))

    async def _drain(self, events: Any) -> None:
        async with aclosing(events):
            async for event in events:
                self.events.append(event)

    async def done(self) -> Done:
        await asyncio.wait_for(self.task, 5)
        done = self.events[-1]
        assert isinstance(done, Done)
        return done

    def kinds(self) -> list[str]:
        return [
            f"Proposal {e.agent.endpoint}" if isinstance(e, Proposal) else type(e).__name__
            for e in self.events
            if not isinstance(e, Token)
        ]

    def tokens(self) -> str:
        return "".join(e.text for e in self.events if isinstance(e, Token))


async def fed(call: ScriptedCall, tokens: int) -> None:
    """Wait until `call`'s consumer has taken `tokens` pieces (it takes each as the call yields it)."""
    await until(lambda: call.trace.completion_tokens == tokens)


def continued(text: str) -> Message:
    return {"role": "assistant", "content": text}


# --- staircase ---


async def test_staircase_steps_continue_the_answer_over_a_growing_append_only_log() -> None:
    caller = ScriptedCaller()
    run = Run(caller, mixture("a", "b", chunk_tokens=2, step_tokens=2))
    a, b = await caller.call("a"), await caller.call("b")
    a.push(*words("A1 A2 A3"))
    b.push(piece("B1"))
    await fed(a, 3)
    await fed(b, 1)
    b.push(piece(" B2"))  # now every live proposal has its 2 tokens
    step1 = await caller.call("agg", 1)
    assert step1.messages == [
        {"role": "system", "content": f"{HEAD}\nAnswer 1 (so far): A1 A2 A3\n\nAnswer 2 (so far): B1 B2"},
        *USER,
    ]
    assert step1.sampling == Sampling(temperature=0.3, max_tokens=2)
    assert not {"continue_final_message", "add_generation_prompt"} & step1.sampling.body().keys()
    step1.push(*words("X1 X2"))
    await fed(step1, 2)
    a.push(piece(" A4"), end())
    await until(lambda: a.outcome == "ok")
    step1.push(end("length"))
    step2 = await caller.call("agg", 2)
    assert step2.messages == [  # the first step's system message unchanged, then the chunks since
        {"role": "system", "content": f"{step1.system}\n\nAnswer 1 (continued, complete): A4"},
        *USER,
        continued("X1 X2"),
    ]
    assert step2.sampling == Sampling(temperature=0.3, max_tokens=2, continue_final=True)
    body = step2.sampling.body()
    assert (body["continue_final_message"], body["add_generation_prompt"]) == (True, False)
    step2.push(piece(" X3"), end("stop"))  # "stop" ends the answer though b still streams
    done = await run.done()
    assert (done.answer, done.finish_reason) == ("X1 X2 X3", "stop")
    assert run.tokens() == done.answer  # one stream across the steps
    assert run.kinds() == ["Proposal a", "Proposal b", "LayerDone", "Done"]
    assert b.cancelled and (b.trace.status, b.trace.note) == ("cut", "the answer ended first")
    trace = done.trace
    assert trace.start == "staircase"
    assert [(s.index, s.reference_tokens, s.completion_tokens, s.finish_reason) for s in trace.steps] == [
        (1, [3, 2], 2, "length"), (2, [4, 2], 1, "stop"),
    ]  # fmt: skip
    assert trace.aggregator is not None
    assert (trace.aggregator.completion_tokens, trace.aggregator.prompt_tokens) == (3, 20)
    assert trace.layers[0].proposals_used == 2
    as_dict = trace.as_dict()
    assert as_dict["start"] == "staircase" and [s["index"] for s in as_dict["steps"]] == [1, 2]
    assert as_dict["usage"]["completion_tokens"] == 4 + 2 + 3  # a, b (cut), the aggregator's steps


async def test_the_last_step_takes_the_rest_of_the_budget_once_every_proposal_ended() -> None:
    caller = ScriptedCaller()
    run = Run(caller, mixture("a", "b", chunk_tokens=1, step_tokens=2))
    a, b = await caller.call("a"), await caller.call("b")
    a.push(piece("A1"))
    b.push(piece("B1"))
    step1 = await caller.call("agg", 1)
    a.push(end())
    b.push(end())
    await until(lambda: a.outcome == b.outcome == "ok")
    step1.push(*words("X1 X2"), end("length"))
    step2 = await caller.call("agg", 2)
    assert step2.sampling == Sampling(temperature=0.3, max_tokens=98, continue_final=True)
    step2.push(piece(" X3"), end("length"))  # the last step: its limit ends the answer
    done = await run.done()
    assert (done.answer, done.finish_reason, len(caller.to("agg"))) == ("X1 X2 X3", "length", 2)
    assert run.kinds() == ["Proposal a", "Proposal b", "LayerDone", "Done"]


async def test_the_request_max_tokens_caps_the_answer_across_steps() -> None:
    caller = ScriptedCaller(replies={"agg": [[*words("X1 X2"), end("length")]] * 2 + [[piece(" X5"), end("length")]]})
    spec = RunSpec.for_mixture("moa", mixture("a", chunk_tokens=1, step_tokens=2), Overrides(max_tokens=5))
    run = Run(caller, spec)
    a = await caller.call("a")
    a.push(piece("A1"))  # and never ends
    done = await run.done()
    assert [call.sampling.max_tokens for call in caller.to("agg")] == [2, 2, 1]
    assert done.finish_reason == "length" and len(done.trace.steps) == 3
    assert a.cancelled and a.trace.note == "the answer ended first"


async def test_a_proposal_that_starts_late_joins_the_log_under_the_next_number() -> None:
    """start_after_s fires while b has written nothing; b's first chunk comes in a later step."""
    caller = ScriptedCaller()
    run = Run(caller, mixture("a", "b", chunk_tokens=2, step_tokens=1, start_after_s=1))  # a writes first
    a, b = await caller.call("a"), await caller.call("b")
    a.push(*words("A1 A2"))
    step1 = await caller.call("agg", 1)
    assert step1.system == f"{HEAD}\nAnswer 1 (so far): A1 A2"
    b.push(*words("B1 B2"), end())
    await until(lambda: b.outcome == "ok")
    step1.push(piece("X"), end("length"))
    step2 = await caller.call("agg", 2)
    assert step2.system == f"{step1.system}\n\nAnswer 2 (complete): B1 B2"
    step2.push(end("stop"))
    done = await run.done()
    assert done.trace.steps[0].reference_tokens == [2, 0]
    assert a.trace.status == "cut"


async def test_a_proposer_dying_mid_stream_stops_contributing_and_the_answer_goes_on() -> None:
    caller = ScriptedCaller()
    run = Run(caller, mixture("a", "b", chunk_tokens=2, step_tokens=2))
    a, b = await caller.call("a"), await caller.call("b")
    a.push(*words("A1 A2"))
    b.push(*words("B1 B2"))
    step1 = await caller.call("agg", 1)
    b.push(piece(" B3"), fail("out of memory"))
    a.push(end())
    await until(lambda: a.outcome == "ok" and b.outcome == "error")
    step1.push(*words("X1 X2"), end("length"))
    step2 = await caller.call("agg", 2)
    assert step2.system == f"{step1.system}\n\nAnswer 1 (complete)\n\nAnswer 2 (continued): B3"
    assert step2.sampling.max_tokens == 98  # every proposal ended: the last step
    step2.push(end("stop"))
    done = await run.done()
    assert (b.trace.status, b.trace.error) == ("error", "engine answered 500: out of memory")
    proposals = {e.agent.endpoint: e.texts for e in run.events if isinstance(e, Proposal)}
    assert proposals == {"a": ["A1 A2"], "b": ["B1 B2 B3"]}
    assert done.trace.layers[0].proposals_used == 2


async def test_the_layer_deadline_cuts_the_proposers_off_and_the_aggregator_goes_on() -> None:
    caller = ScriptedCaller()
    run = Run(caller, mixture("a", "b", layer={"deadline_s": 2}, chunk_tokens=1))
    a, b = await caller.call("a"), await caller.call("b")
    a.push(piece("A1"))
    b.push(piece("B1"))
    step1 = await caller.call("agg", 1)
    await until(lambda: a.outcome == "late" and b.outcome == "late")
    step1.push(*words("X1 X2"), end("stop"))
    done = await run.done()
    assert done.answer == "X1 X2"
    assert [(x.status, x.error) for x in done.trace.layers[0].agents] == [("late", "cut off by the 2s deadline")] * 2


async def test_the_request_deadline_during_a_step_ends_the_request_and_every_call() -> None:
    caller = ScriptedCaller()
    # 3 s: long enough for step 1 to start first on a loaded machine; the test then waits for the deadline.
    run = Run(caller, mixture("a", chunk_tokens=1, timeout_s=3))
    a = await caller.call("a")
    a.push(piece("A1"))
    step1 = await caller.call("agg", 1)  # never answers
    with pytest.raises(DeadlineError, match=r"^moa: no complete answer within 3s$"):
        await run.done()
    assert step1.cancelled and step1.outcome == "timeout"
    assert a.cancelled


async def test_quorum_never_reached_before_the_first_step_is_a_503_naming_each_agent() -> None:
    caller = ScriptedCaller()
    run = Run(caller, mixture("a", "b", "c", layer={"min_ok": 2}, chunk_tokens=1))
    a, b, _ = await caller.call("a"), await caller.call("b"), await caller.call("c")
    a.push(fail("boom"))
    b.push(fail("boom"))  # c, still silent, cannot make the quorum alone
    with pytest.raises(QuorumError) as caught:
        await run.done()
    assert str(caught.value) == (
        "moa: layer 1 got 0 of the 2 answers it needs — a: error (engine answered 500: boom); "
        "b: error (engine answered 500: boom); c: cancelled"
    )
    assert caller.to("agg") == [] and caller.to("c")[0].cancelled


async def test_the_layer_deadline_below_quorum_before_the_first_step_is_a_504() -> None:
    caller = ScriptedCaller()
    run = Run(caller, mixture("a", "b", layer={"min_ok": 2, "deadline_s": 2}, chunk_tokens=1))
    a = await caller.call("a")
    a.push(piece("A1"))
    with pytest.raises(DeadlineError) as caught:
        await run.done()
    assert str(caught.value) == (
        "moa: layer 1 got 1 of the 2 answers it needs — "
        "a: late (cut off by the 2s deadline); b: late (cut off by the 2s deadline)"
    )
    assert caller.to("agg") == []


async def test_consumer_going_away_during_a_step_cancels_every_call() -> None:
    caller = ScriptedCaller()
    run = Run(caller, mixture({"endpoint": "a", "n": 2}, "b", chunk_tokens=1))
    a, b = await caller.call("a"), await caller.call("b")
    a.push(piece("A"), piece("A", 1))
    b.push(piece("B"))
    step1 = await caller.call("agg", 1)
    step1.push(piece("X"))
    await until(lambda: any(isinstance(e, Token) for e in run.events))
    run.task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run.task
    assert [(c.endpoint, c.cancelled, c.outcome) for c in caller.calls] == [
        ("a", True, "cancelled"), ("b", True, "cancelled"), ("agg", True, "cancelled"),
    ]  # fmt: skip


# --- early ---


@pytest.mark.parametrize("first", ["a", "b"])
async def test_early_waits_for_every_live_sample_then_cuts_the_rest(first: str) -> None:
    caller = ScriptedCaller(replies={"agg": [[*words("X1 X2"), end("stop")]]})
    run = Run(caller, mixture("a", {"endpoint": "b", "n": 2}, start="early", chunk_tokens=2))
    a, b = await caller.call("a"), await caller.call("b")
    feeds = {"a": (a, [*words("A1 A2")]), "b": (b, [*words("B1 B2"), piece("C1", 1)])}
    for name in (first, "b" if first == "a" else "a"):  # the arrival order does not change the references
        call, items = feeds[name]
        call.push(*items)
        await fed(call, len(items))
    b.push(piece(" C2", 1))  # b's second sample was the last one short of 2 tokens
    done = await run.done()
    (agg,) = caller.to("agg")
    assert agg.messages == [
        {
            "role": "system",
            "content": f"{HEAD}\nAnswer 1 (so far): A1 A2\n\nAnswer 2 (so far): B1 B2\n\nAnswer 3 (so far): C1 C2",
        },
        *USER,
    ]
    assert agg.sampling == Sampling(temperature=0.3, max_tokens=100)  # the whole budget, nothing to continue
    assert "continue_final_message" not in agg.sampling.body()
    assert all(c.cancelled and (c.trace.status, c.trace.note) == ("cut", "early aggregation") for c in (a, b))
    assert run.kinds() == ["Proposal a", "Proposal b", "LayerDone", "Done"]
    assert next(e.texts for e in run.events if isinstance(e, Proposal) and e.agent.endpoint == "b") == [
        "B1 B2", "C1 C2",
    ]  # fmt: skip
    assert (done.answer, done.trace.start, done.trace.layers[0].proposals_used) == ("X1 X2", "early", 3)
    assert [(s.index, s.reference_tokens) for s in done.trace.steps] == [(1, [2, 2, 2])]


async def test_early_counts_a_finished_short_proposal_as_done() -> None:
    caller = ScriptedCaller(replies={"agg": [[piece("X"), end("stop")]]})
    run = Run(caller, mixture("a", "b", start="early", chunk_tokens=3))
    a, b = await caller.call("a"), await caller.call("b")
    a.push(piece("A1"), end())  # one token, but finished
    b.push(*words("B1 B2 B3"))
    await run.done()
    assert caller.to("agg")[0].system == f"{HEAD}\nAnswer 1 (complete): A1\n\nAnswer 2 (so far): B1 B2 B3"
    assert (a.trace.status, b.trace.status) == ("ok", "cut")


async def test_after_layers_is_recorded_and_has_no_steps() -> None:
    caller = ScriptedCaller(replies={"a": [[piece("A"), end()]], "agg": [[piece("X"), end()]]})
    done = await Run(caller, mixture("a", start="after_layers")).done()
    assert (done.trace.start, done.trace.steps) == ("after_layers", [])
    assert done.trace.as_dict()["steps"] == []


async def test_steps_counted_per_answer() -> None:
    metrics = Metrics(CollectorRegistry())
    replies = {"a": [[piece("A")]], "agg": [[piece("X"), end("length")], [piece("Y"), end()]]}  # a never ends
    await Run(ScriptedCaller(replies=replies), mixture("a", chunk_tokens=1, step_tokens=1), metrics).done()
    assert metrics.registry.get_sample_value("moa_aggregation_steps_sum", {"mixture": "moa"}) == 2
    assert metrics.registry.get_sample_value("moa_aggregation_steps_count", {"mixture": "moa"}) == 1


async def test_references_are_trimmed_to_the_aggregators_window_as_for_any_aggregator() -> None:
    long = " ".join(["word"] * 300)
    caller = ScriptedCaller(
        replies={"a": [[*words(long), end()]], "agg": [[piece("X"), end()]]}, windows={"agg": 256}
    )  # fmt: skip
    done = await Run(caller, mixture("a", chunk_tokens=300)).done()
    assert done.trace.aggregator is not None
    assert (done.trace.aggregator.note or "").startswith("references trimmed to fit the 256-token window")
    assert caller.to("agg")[0].system.endswith(" [...]")


# --- the log ---


def test_the_log_only_grows_at_its_end_and_marks_what_is_complete() -> None:
    one, two = SampleStream(AgentTrace("a", "proposer")), SampleStream(AgentTrace("b", "proposer"))
    log = ChunkLog()
    one.pieces += ["Hello", " there"]
    two.pieces += ["  "]  # whitespace waits for the text after it
    log.take([one, two])
    assert log.entries == ["Answer 1 (so far): Hello there"]
    two.pieces += ["Hi"]
    one.done = one.complete = True
    log.take([one, two])
    two.pieces += [" again"]
    two.done = True  # failed: what it sent stays, with no (complete)
    log.take([one, two])
    log.take([one, two])
    assert log.entries == [
        "Answer 1 (so far): Hello there", "Answer 1 (complete)", "Answer 2 (so far): Hi", "Answer 2 (continued): again",
    ]  # fmt: skip
    assert log.answers == 2


async def test_earlier_layers_run_whole_and_only_the_last_one_streams_into_the_aggregator() -> None:
    caller = ScriptedCaller(replies={"p": [[*words("P1 P2"), end()]], "q": [[piece("Q1"), end()]]})
    config = MixtureConfig.model_validate(
        {
            "layers": [{"agents": [{"endpoint": "p"}, {"endpoint": "q"}]}, {"agents": [{"endpoint": "a"}]}],
            "aggregator": {"endpoint": "agg", "max_tokens": 100, "start": "early", "chunk_tokens": 1},
        }
    )
    run = Run(caller, config)
    a = await caller.call("a")
    assert a.system.endswith("\n1. P1 P2\n2. Q1")  # layer 1's whole answers, numbered as always
    a.push(piece("A1"))
    agg = await caller.call("agg")
    assert agg.system == f"{HEAD}\nAnswer 1 (so far): A1"
    agg.push(piece("X"), end())
    done = await run.done()
    kinds = run.kinds()
    assert sorted(kinds[:2]) == ["Proposal p", "Proposal q"]
    assert kinds[2:] == ["LayerDone", "Proposal a", "LayerDone", "Done"]
    assert [layer.proposals_used for layer in done.trace.layers] == [2, 1]


async def test_a_proposal_refused_for_its_own_window_fails_the_request() -> None:
    caller = ScriptedCaller(windows={"a": 64})
    with pytest.raises(InvalidRequest, match="endpoint 'a' has a context window of 64 tokens"):
        await Run(caller, mixture("a", "b"), conversation=[{"role": "user", "content": "x" * 600}]).done()
    assert [c.endpoint for c in caller.calls] == ["b"] and caller.calls[0].cancelled
