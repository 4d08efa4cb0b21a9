"""The Mixture-of-Agents pipeline: proposer layers, then a streamed aggregator.

`Pipeline.run(spec, messages)` is an async generator of events: each
proposal as it arrives, each finished layer, the aggregator's tokens, and a
final `Done` with the answer, usage and trace. Layers fan out concurrently
and proceed when every agent has answered, failed, or been cut off by the
layer deadline, provided at least `min_ok` answers arrived; below that the
request fails at once (503 quorum, 504 deadline) naming each endpoint and
why. A conversation the aggregator's context window cannot hold is
refused (413) before any call. A pass-through to one endpoint is the same
run with no layers. An aggregator that starts `early` or in `staircase`
steps takes the last layer's proposals as they stream (staircase.py).

It knows nothing of HTTP. Engine calls go through a `Caller` (the endpoint
pool in production, plain functions in tests), each carrying its request's
start as its place in a full endpoint's queue (oldest request first) and,
for a batch run, its priority (batch calls wait behind interactive ones).
Deadlines bound each wait (for a layer, for the aggregator's next token)
rather than the generator as a whole: a timeout must not span a `yield`
of an async generator (it would cancel the consumer instead). A call cut
off by a deadline has its trace marked (`late`, `timeout`) before it is
cancelled, so that the endpoint's record of it says the same.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing
from dataclasses import replace
from typing import Protocol

from moa_local.config import AgentConfig, LayerConfig
from moa_local.errors import BackendError, DeadlineError, MoaError, PayloadTooLarge
from moa_local.metrics import Metrics
from moa_local.mixture.cutoff import capped_texts
from moa_local.mixture.events import Done, Event, LayerDone, Proposal, Token
from moa_local.mixture.quorum import shortfall
from moa_local.mixture.references import Message, check_fits, fit
from moa_local.mixture.spec import Priority, RunSpec, Sampling, sampling_of
from moa_local.mixture.staircase import Staircase, partial_instruction
from moa_local.mixture.streams import ProposalStreams
from moa_local.mixture.trace import AgentTrace, LayerTrace, RequestTrace


class Caller(Protocol):
    def stream(
        self, endpoint: str, messages: list[Message], sampling: Sampling, trace: AgentTrace, order: float = 0.0,
        priority: Priority = "interactive",
    ) -> AsyncGenerator[tuple[int, str], None]:
        """The call's (choice index, text) pieces. It fills `trace`: `attempts` stays 0 while the call
        waits for a slot at the endpoint and counts its attempts from its admission on."""
        ...  # fmt: skip

    def context_window(self, endpoint: str) -> int | None: ...


class Pipeline:
    def __init__(self, caller: Caller, metrics: Metrics) -> None:
        self.caller = caller
        self.metrics = metrics

    async def run(self, spec: RunSpec, conversation: Sequence[Message]) -> AsyncGenerator[Event, None]:
        start = time.perf_counter()
        deadline = start + spec.timeout_s
        trace = RequestTrace(spec.model)
        outcome = "error"
        streamed = bool(spec.layers) and spec.aggregation.start != "after_layers"
        trace.start = spec.aggregation.start if streamed else "after_layers"
        try:
            step = spec.aggregator
            check_fits(  # before any call: the aggregator gets at least the last layer's quorum of references
                conversation, spec.layers[-1].min_ok if spec.layers else 0,
                instruction=partial_instruction(spec.reference_prompt) if streamed else spec.reference_prompt,
                system_prompt=step.system_prompt, context_window=self.caller.context_window(step.endpoint),
                endpoint=step.endpoint, numbered=not streamed,
            )  # fmt: skip
            references: list[str] = []
            for index, layer in enumerate(spec.layers[:-1] if streamed else spec.layers, start=1):
                layer_trace = LayerTrace(index)
                trace.layers.append(layer_trace)
                answers: list[str] = []
                layer_run = self._layer(spec, layer, layer_trace, conversation, references, start, deadline, answers)
                async with aclosing(layer_run):
                    async for proposal in layer_run:
                        yield proposal
                references = answers
                self.metrics.observe_layer(spec.model, index, layer_trace.duration_s, layer_trace.proposals_used)
                yield LayerDone(layer_trace)
            if streamed:
                staircase = self._staircase(spec, conversation, references, trace, start, deadline)
                async with aclosing(staircase.run()) as steps:
                    async for event in steps:
                        yield event
                trace.duration_s = time.perf_counter() - start
                outcome = "ok"
                yield Done("".join(staircase.parts), staircase.finish_reason, trace)
                return
            parts: list[str] = []
            aggregator = AgentTrace(spec.aggregator.endpoint, "aggregator")
            trace.aggregator = aggregator
            fitted = fit(
                conversation, references, instruction=spec.reference_prompt, system_prompt=step.system_prompt,
                max_tokens=step.sampling.max_tokens, context_window=self.caller.context_window(step.endpoint),
                endpoint=step.endpoint,
            )  # fmt: skip
            aggregator.note = fitted.note
            sampling = replace(step.sampling, max_tokens=fitted.max_tokens)
            call = self._call(spec, step.endpoint, fitted.messages, sampling, aggregator, start)
            async with aclosing(call) as tokens, aclosing(capped_texts(tokens, spec, aggregator, deadline)) as texts:
                async for text in texts:
                    if trace.ttft_s is None:
                        trace.ttft_s = time.perf_counter() - start
                    parts.append(text)
                    yield Token(text)
            trace.duration_s = time.perf_counter() - start
            outcome = "ok"
            finish = aggregator.finish_reasons[0] if aggregator.finish_reasons else None
            yield Done("".join(parts), finish, trace)
        except DeadlineError:
            outcome = "timeout"
            raise
        except PayloadTooLarge:
            outcome = "rejected"
            raise
        except (asyncio.CancelledError, GeneratorExit):
            if outcome != "ok":  # after Done the answer is complete, whenever the consumer stops
                outcome = "cancelled"
            raise
        except MoaError as exc:
            outcome = "timeout" if getattr(exc, "code", None) == "backend_timeout" else "error"
            raise
        finally:
            if outcome != "ok":  # an answered request's trace was handed out with Done: keep it
                trace.duration_s = time.perf_counter() - start
            self.metrics.observe_request(
                spec.model, outcome, trace.duration_s, trace.ttft_s, trace.overhead_s if outcome == "ok" else None
            )

    def _call(
        self, spec: RunSpec, endpoint: str, messages: list[Message], sampling: Sampling, trace: AgentTrace,
        order: float,
    ) -> AsyncGenerator[tuple[int, str], None]:  # fmt: skip
        if spec.priority == "interactive":  # the default: a Caller written before priorities need not take one
            return self.caller.stream(endpoint, messages, sampling, trace, order)
        return self.caller.stream(endpoint, messages, sampling, trace, order, priority=spec.priority)

    def _staircase(
        self, spec: RunSpec, conversation: Sequence[Message], references: list[str], trace: RequestTrace,
        start: float, deadline: float,
    ) -> Staircase:  # fmt: skip
        """The last layer, streamed into an aggregator that starts early or in steps."""
        layer = spec.layers[-1]
        layer_trace = LayerTrace(len(spec.layers))
        trace.layers.append(layer_trace)
        until, cut_off_by = _bounds(spec, layer, time.perf_counter(), deadline)
        streams = ProposalStreams(
            spec.model, layer, layer_trace, self.metrics, until=until, cut_off_by=cut_off_by,
            call=lambda agent, agent_trace: self._proposal(spec, agent, agent_trace, conversation, references, start),
        )  # fmt: skip
        endpoint = spec.aggregator.endpoint
        return Staircase(
            spec, conversation, streams,
            lambda messages, sampling, call_trace: self._call(spec, endpoint, messages, sampling, call_trace, start),
            trace, self.metrics, request_start=start, deadline=deadline,
            context_window=self.caller.context_window(endpoint),
        )  # fmt: skip

    async def _layer(
        self,
        spec: RunSpec,
        layer: LayerConfig,
        layer_trace: LayerTrace,
        conversation: Sequence[Message],
        references: list[str],
        request_start: float,
        request_deadline: float,
        answers: list[str],
    ) -> AsyncGenerator[Proposal, None]:
        """Run one layer, yielding proposals as they arrive; fill `answers` in agent order."""
        start = time.perf_counter()
        until, cut_off_by = _bounds(spec, layer, start, request_deadline)
        tasks: dict[asyncio.Task[list[str]], AgentTrace] = {}
        for agent in layer.agents:
            agent_trace = AgentTrace(agent.endpoint, "proposer", samples=agent.n)
            layer_trace.agents.append(agent_trace)
            task = asyncio.create_task(self._propose(spec, agent, agent_trace, conversation, references, request_start))
            tasks[task] = agent_trace
        texts_by_agent: dict[int, list[str]] = {}
        pending = set(tasks)
        ok = 0
        try:
            while pending:
                done, pending = await asyncio.wait(
                    pending, timeout=max(0.0, until - time.perf_counter()), return_when=asyncio.FIRST_COMPLETED
                )
                if not done:  # the deadline passed
                    for task in pending:
                        tasks[task].status = "late"
                        tasks[task].error = cut_off_by
                    break
                for task in done:
                    error = task.exception()
                    if error is not None and not isinstance(error, BackendError):
                        raise error  # a refused prompt or a bug: not an agent failure
                    texts = [] if error is not None else [t for t in task.result() if t.strip()]
                    agent_trace = tasks[task]
                    texts_by_agent[id(agent_trace)] = texts
                    ok += len(texts)
                    yield Proposal(layer_trace.index, agent_trace, texts)
                possible = ok + sum(tasks[t].samples for t in pending)
                if possible < layer.min_ok:
                    break
        finally:
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
            layer_trace.duration_s = time.perf_counter() - start
        layer_trace.proposals_used = ok
        if ok < layer.min_ok:
            self.metrics.observe_layer(spec.model, layer_trace.index, layer_trace.duration_s, ok, quorum_met=False)
            raise shortfall(spec.model, layer_trace, layer.min_ok)
        for agent_trace in layer_trace.agents:
            answers.extend(texts_by_agent.get(id(agent_trace), []))

    async def _propose(
        self,
        spec: RunSpec,
        agent: AgentConfig,
        agent_trace: AgentTrace,
        conversation: Sequence[Message],
        references: list[str],
        request_start: float,
    ) -> list[str]:
        parts: list[list[str]] = [[] for _ in range(agent.n)]
        stream = self._proposal(spec, agent, agent_trace, conversation, references, request_start)
        async with aclosing(stream):
            async for index, text in stream:
                if index < agent.n:
                    parts[index].append(text)
        return ["".join(p) for p in parts]

    async def _proposal(
        self,
        spec: RunSpec,
        agent: AgentConfig,
        agent_trace: AgentTrace,
        conversation: Sequence[Message],
        references: list[str],
        request_start: float,
    ) -> AsyncGenerator[tuple[int, str], None]:
        """One proposer's call, its messages fitted to its window (on the first `anext`, in its task)."""
        sampling = sampling_of(agent)
        fitted = fit(
            conversation, references, instruction=spec.reference_prompt, system_prompt=agent.system_prompt,
            max_tokens=sampling.max_tokens, context_window=self.caller.context_window(agent.endpoint),
            endpoint=agent.endpoint,
        )  # fmt: skip
        agent_trace.note = fitted.note
        sampling = replace(sampling, max_tokens=fitted.max_tokens)
        async with aclosing(
            self._call(spec, agent.endpoint, fitted.messages, sampling, agent_trace, request_start)
        ) as stream:
            async for item in stream:
                yield item


def _bounds(spec: RunSpec, layer: LayerConfig, start: float, request_deadline: float) -> tuple[float, str]:
    """When a layer started at `start` is cut off, and what its late agents' error says.

    Whichever bound comes first cuts the layer off, and the late agents' error names that one.
    """
    own = None if layer.deadline_s is None else start + layer.deadline_s
    if own is not None and own <= request_deadline:
        return own, f"cut off by the {layer.deadline_s:g}s deadline"
    return request_deadline, f"cut off by the {spec.timeout_s:g}s request deadline"
