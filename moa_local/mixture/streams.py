"""The last proposer layer as live streams, for an aggregator that starts early or in staircase steps.

`ProposalStreams` runs one task per agent of the layer and keeps each
sample's text as its pieces arrive (`SampleStream`). It owns the layer's
bounds as `_layer` in pipeline.py does: at the layer deadline (or the
request's, whichever comes first) the agents still streaming are marked
`late` and cancelled; their text so far stays. `wait_for_start` waits
until the aggregator may start; `cut` ends the proposals the aggregator no
longer needs (status `cut`, with a note); `aclose` cancels whatever still
runs (a client that went away, an error) and waits for it to unwind.

Tokens are counted as streamed pieces: vLLM sends about one token per SSE
delta, so a piece is a token near enough for deciding when to start, and no
tokenizer round trip is needed.

Left out: building the aggregator's prompt and calling it (staircase.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing, suppress
from dataclasses import dataclass, field

from moa_local.config import AgentConfig, LayerConfig
from moa_local.errors import BackendError
from moa_local.metrics import Metrics
from moa_local.mixture.events import Proposal
from moa_local.mixture.quorum import shortfall
from moa_local.mixture.trace import AgentTrace, LayerTrace

# Opens one agent's call (its messages fitted inside the generator, so in the agent's task).
ProposalCall = Callable[[AgentConfig, AgentTrace], AsyncGenerator[tuple[int, str], None]]


@dataclass
class SampleStream:
    """One sample's text so far. `done`: no more will come; `complete`: it finished normally."""

    agent: AgentTrace
    pieces: list[str] = field(default_factory=list)
    done: bool = False
    complete: bool = False

    @property
    def tokens(self) -> int:
        return len(self.pieces)

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    @property
    def has_text(self) -> bool:
        return any(piece.strip() for piece in self.pieces)


class ProposalStreams:
    def __init__(
        self, model: str, layer: LayerConfig, layer_trace: LayerTrace, metrics: Metrics, *,
        until: float, cut_off_by: str, call: ProposalCall,
    ) -> None:  # fmt: skip
        self.model = model
        self.layer = layer
        self.trace = layer_trace
        self.metrics = metrics
        self.started_at = time.perf_counter()
        self.samples: list[SampleStream] = []
        self._until = until  # a perf_counter time
        self._cut_off_by = cut_off_by
        self._tasks: dict[asyncio.Task[None], list[SampleStream]] = {}
        self._reported: set[asyncio.Task[None]] = set()
        self._changed = asyncio.Event()
        self._timer: asyncio.TimerHandle | None = None
        self._call = call

    def start(self) -> None:
        """Open every agent's call; arm the deadline."""
        self.started_at = time.perf_counter()
        call = self._call
        for agent in self.layer.agents:
            agent_trace = AgentTrace(agent.endpoint, "proposer", samples=agent.n)
            self.trace.agents.append(agent_trace)
            samples = [SampleStream(agent_trace) for _ in range(agent.n)]
            self.samples.extend(samples)
            task = asyncio.create_task(self._consume(call(agent, agent_trace), samples))
            self._tasks[task] = samples
        loop = asyncio.get_running_loop()
        self._timer = loop.call_at(loop.time() + (self._until - time.perf_counter()), self._expire)

    @property
    def all_done(self) -> bool:
        return all(sample.done for sample in self.samples)

    async def wait_for_start(self, chunk_tokens: int, start_after_s: float | None) -> None:
        """Wait until every live sample has `chunk_tokens` (or `start_after_s` passed) with `min_ok` texts.

        Raise the layer's shortfall (503, or 504 after a deadline) once
        `min_ok` samples with text can no longer be reached.
        """
        start_at = None if start_after_s is None else self.started_at + start_after_s
        while True:
            self._raise_bug()
            live = [sample for sample in self.samples if not sample.done]
            with_text = sum(sample.has_text for sample in self.samples)
            if with_text + sum(not sample.has_text for sample in live) < self.layer.min_ok:
                break  # the quorum cannot be reached any more
            if with_text >= self.layer.min_ok:
                if not live or all(sample.tokens >= chunk_tokens for sample in live):
                    break
                if start_at is not None and time.perf_counter() >= start_at:
                    break
            self._changed.clear()
            left = None if start_at is None else start_at - time.perf_counter()
            timeout = None if left is None or left <= 0 else left  # past start_after_s: wait for texts
            with suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout)
        self.trace.proposals_used = with_text
        if with_text < self.layer.min_ok:
            await self.aclose()  # the agents still streaming end as cancelled, as the error then says
            self.trace.duration_s = time.perf_counter() - self.started_at
            self.metrics.observe_layer(self.model, self.trace.index, self.trace.duration_s, with_text, False)
            raise shortfall(self.model, self.trace, self.layer.min_ok)

    def finished(self) -> list[Proposal]:
        """A `Proposal` for each agent that ended since the last call (its whole text, partial if cut)."""
        self._raise_bug()
        proposals = []
        for task, samples in self._tasks.items():
            if task.done() and task not in self._reported:
                self._reported.add(task)
                texts = [sample.text for sample in samples if sample.has_text]
                proposals.append(Proposal(self.trace.index, samples[0].agent, texts))
        return proposals

    async def cut(self, note: str) -> None:
        """End the agents still streaming, as no longer needed (status `cut`), and wait for them."""
        live = [task for task in self._tasks if not task.done()]
        for task in live:
            agent = self._tasks[task][0].agent
            if agent.status == "pending":  # marked before the cancellation reaches the call, which records it
                agent.status, agent.note = "cut", note
            task.cancel()
        if live:
            await asyncio.wait(live)

    async def aclose(self) -> None:
        """Cancel whatever still streams and wait for it (every upstream call is closed on return)."""
        if self._timer is not None:
            self._timer.cancel()
        live = [task for task in self._tasks if not task.done()]
        for task in live:
            task.cancel()
        if live:
            await asyncio.wait(live)
        for task in self._tasks:  # retrieved, so that a failed request logs no "never retrieved" task
            if not task.cancelled():
                task.exception()

    async def _consume(self, stream: AsyncGenerator[tuple[int, str], None], samples: list[SampleStream]) -> None:
        try:
            async with aclosing(stream):
                async for index, text in stream:
                    if index < len(samples):
                        samples[index].pieces.append(text)
                        self._changed.set()
            for sample in samples:
                sample.complete = True
        except BackendError:
            pass  # the agent failed: its trace says how, and its samples keep what they streamed
        finally:
            for sample in samples:
                sample.done = True
            if self.all_done:
                self.trace.duration_s = time.perf_counter() - self.started_at
            self._changed.set()

    def _expire(self) -> None:
        """The deadline: the agents still streaming are late; what they sent so far stays."""
        self._timer = None
        for task, samples in self._tasks.items():
            if not task.done():
                agent = samples[0].agent
                if agent.status == "pending":
                    agent.status, agent.error = "late", self._cut_off_by
                task.cancel()

    def _raise_bug(self) -> None:
        """A refused prompt or a bug in an agent's task is not an agent failure: it ends the request."""
        for task in self._tasks:
            if task.done() and not task.cancelled() and (error := task.exception()) is not None:
                raise error
