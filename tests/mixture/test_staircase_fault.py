"""Early and staircase aggregation over real loopback HTTP to the fake engine: what the engines receive.

The point here is the wire: the steps' request bodies (vLLM's continuation
extras, the append-only references, the answer so far) and the upstream
calls closed when a proposal is cut or the client goes away (the fake sees
each disconnect).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing, asynccontextmanager
from typing import TYPE_CHECKING, Any

import pytest
from prometheus_client import CollectorRegistry

from moa_local.config import EndpointConfig, MixtureConfig
from moa_local.engines.pool import EndpointPool
from moa_local.metrics import Metrics
from moa_local.mixture.events import Done, Event
from moa_local.mixture.pipeline import Pipeline
from moa_local.mixture.references import Message
from moa_local.mixture.spec import RunSpec
from tests.support.calls import until, value
from tests.support.gateway_fixtures import fake_config
from tests.support.gateway_fixtures import mixture as mixture_config

if TYPE_CHECKING:
    from tests.support.fake_fixtures import FakeServer
    from tests.support.gateway_fixtures import GatewayFactory

USER: list[Message] = [{"role": "user", "content": "say something"}]
SLOW = {"tokens": 5000, "token_delay_ms": 20.0}  # a proposer that streams for 100 s unless it is cut


def mixture(*agents: str, **aggregator: Any) -> RunSpec:
    config = MixtureConfig.model_validate(
        {
            "layers": [{"agents": [{"endpoint": a, "max_tokens": 5000} for a in agents]}],
            "aggregator": {"endpoint": "agg", "temperature": 0.3, **aggregator},
        }
    )
    return RunSpec.for_mixture("moa", config)


@asynccontextmanager
async def pipeline(servers: dict[str, FakeServer], metrics: Metrics) -> AsyncIterator[Pipeline]:
    configs = {
        name: EndpointConfig.model_validate({"base_url": server.base_url, "model": name, "timeout_s": 30})
        for name, server in servers.items()
    }
    async with EndpointPool(configs, metrics) as pool:
        yield Pipeline(pool, metrics)


async def drain(events: Any, into: list[Event]) -> None:
    async with aclosing(events):
        async for event in events:
            into.append(event)


def system(body: dict[str, Any]) -> str:
    messages: Sequence[dict[str, Any]] = body["messages"]
    assert messages[0]["role"] == "system"
    return str(messages[0]["content"])


async def test_fault_staircase_steps_reach_the_fake_engine_as_continuations(fake_engine: Any) -> None:
    servers = {"a": fake_engine(model="a", **SLOW), "b": fake_engine(model="b", **SLOW)}
    servers["agg"] = fake_engine(model="agg", tokens=10)  # "agg says: w1 ... w10": longer than any step
    metrics = Metrics(CollectorRegistry())
    events: list[Event] = []
    spec = mixture("a", "b", start="staircase", chunk_tokens=3, step_tokens=4, max_tokens=16)
    async with pipeline(servers, metrics) as moa:
        await drain(moa.run(spec, USER), events)
    done = events[-1]
    assert isinstance(done, Done)
    bodies = servers["agg"].chat_bodies()
    assert len(bodies) == 4 == len(done.trace.steps)  # 16 tokens in steps of 4; the proposers never ended
    assert [body["max_tokens"] for body in bodies] == [4, 4, 4, 4]
    assert "continue_final_message" not in bodies[0] and "add_generation_prompt" not in bodies[0]
    answer = ""
    for before, body in itertools.pairwise(bodies):
        answer += "agg says: w1 w2"  # each step ends at its 4 tokens (the fake starts each reply afresh)
        assert (body["continue_final_message"], body["add_generation_prompt"]) == (True, False)
        assert body["messages"][1:] == [*USER, {"role": "assistant", "content": answer}]
        assert system(body).startswith(system(before))  # append-only: the previous step's prompt is its prefix
    first, _, second = system(bodies[0]).split("\n")[-3:]  # at least 3 tokens each; more, as streaming goes on
    assert first.startswith("Answer 1 (so far): a says: w1") and second.startswith("Answer 2 (so far): b says: w1")
    assert done.finish_reason == "length" and done.trace.aggregator is not None
    assert done.trace.aggregator.completion_tokens == 16
    for name in ("a", "b"):  # cut once the answer ended: the engines were told to stop
        servers[name].wait_for_event("disconnect")
        assert value(metrics, "moa_agent_calls_total", endpoint=name, role="proposer", outcome="cut") == 1
    assert value(metrics, "moa_agent_calls_total", endpoint="agg", role="aggregator", outcome="ok") == 4


async def test_fault_early_aggregation_aborts_the_rest_of_each_proposal(fake_engine: Any) -> None:
    servers = {"a": fake_engine(model="a", **SLOW), "b": fake_engine(model="b", **SLOW)}
    servers["agg"] = fake_engine(model="agg", tokens=3)
    metrics = Metrics(CollectorRegistry())
    events: list[Event] = []
    async with pipeline(servers, metrics) as moa:
        await drain(moa.run(mixture("a", "b", start="early", chunk_tokens=2), USER), events)
    done = events[-1]
    assert isinstance(done, Done) and done.answer == "agg says: w1 w2 w3"
    (body,) = servers["agg"].chat_bodies()
    assert "continue_final_message" not in body and body["max_tokens"] == 512
    for name in ("a", "b"):
        event = servers[name].wait_for_event("disconnect")
        assert event.stage == "stream"
        assert value(metrics, "moa_agent_calls_total", endpoint=name, role="proposer", outcome="cut") == 1


async def test_fault_disconnect_during_a_step_cancels_every_upstream_call(fake_engine: Any) -> None:
    servers = {"a": fake_engine(model="a", **SLOW), "b": fake_engine(model="b", **SLOW)}
    servers["agg"] = fake_engine(model="agg", hang=True)  # the step is under way when the client goes
    metrics = Metrics(CollectorRegistry())
    events: list[Event] = []
    async with pipeline(servers, metrics) as moa:
        task = asyncio.create_task(drain(moa.run(mixture("a", "b", start="staircase", chunk_tokens=2), USER), events))
        await until(lambda: len(servers["agg"].chat_bodies()) == 1)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert task.cancelled()
    for name in ("a", "b", "agg"):
        assert servers[name].wait_for_event("disconnect").kind == "disconnect"
    for name, role in (("a", "proposer"), ("b", "proposer"), ("agg", "aggregator")):
        assert value(metrics, "moa_agent_calls_total", endpoint=name, role=role, outcome="cancelled") == 1
    assert value(metrics, "moa_requests_total", mixture="moa", outcome="cancelled") == 1


@pytest.mark.parametrize("stream", [False, True])
def test_fault_the_gateway_answers_a_staircase_mixture_unchanged(
    fake_engine: Any, gateway_server: GatewayFactory, stream: bool
) -> None:
    """The API consumes the same events: one answer across the steps, streamed or whole, with the trace."""
    servers = {"a": fake_engine(model="a", **SLOW), "agg": fake_engine(model="agg", tokens=10)}
    aggregator = {"endpoint": "agg", "max_tokens": 8, "start": "staircase", "chunk_tokens": 2, "step_tokens": 4}
    # The fake stands in for a vLLM server: declared able to continue, as an external one must be.
    config = fake_config(servers, {"mix": mixture_config(["a"], aggregator)}, continues_final_message=True)
    gw = gateway_server(config)
    client = gw.client()
    extra = {"moa": {"trace": True}}
    if stream:
        chunks = list(client.chat.completions.create(model="mix", messages=USER, stream=True, extra_body=extra))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        trace = (chunks[-1].model_extra or {})["moa"]
    else:
        reply = client.chat.completions.create(model="mix", messages=USER, extra_body=extra)
        text, finish = reply.choices[0].message.content or "", [reply.choices[0].finish_reason]
        trace = (reply.model_extra or {})["moa"]
    assert text == "agg says: w1 w2agg says: w1 w2" and finish == ["length"]  # two steps of 4 tokens
    assert trace["start"] == "staircase" and [step["index"] for step in trace["steps"]] == [1, 2]
    assert trace["aggregator"]["completion_tokens"] == 8
    servers["a"].wait_for_event("disconnect")  # the proposer, cut when the answer ended
