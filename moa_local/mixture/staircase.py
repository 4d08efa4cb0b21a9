"""Early and staircase aggregation: the aggregator starts before the last proposer layer has finished.

With `start: after_layers` (the method as published) the first answer token
waits for the slowest proposer and then the aggregator's prefill. Here the
last layer's proposals stream (`streams.py`) and the aggregator starts once
every live sample (every sample of an agent with n > 1; a failed or
finished one counts as done) has streamed `chunk_tokens` tokens, or
`start_after_s` after the layer started, provided `min_ok` samples have
some text (after `start_after_s` it waits for those; the layer and request
deadlines and an unreachable quorum end the wait with the usual 504/503).
Earlier layers run as before: only the last layer streams into the
aggregator (streaming earlier layers into later ones is left for later
work, once this is measured).

- `early`: one aggregator call with what has arrived. The rest of every
  proposal is cancelled (trace status `cut`, note "early aggregation"):
  nothing would read it, and a cancelled stream makes vLLM abort the
  request and free its KV cache, so the engines stop spending compute on
  it. The trace keeps the cut agent's timings and tokens.
- `staircase`: the proposers keep streaming and the aggregator writes its
  answer in steps. Each step asks for at most `step_tokens` tokens and
  continues its own output so far: the messages end with an assistant
  message holding the answer so far, and the call carries vLLM's
  `continue_final_message: true, add_generation_prompt: false` (steps
  after the first only: the first has nothing to continue). Between steps
  the references grow by the chunks that arrived meanwhile. Once every
  proposal has ended, the next step is the last: it may use the rest of
  the aggregator's `max_tokens`, which caps the answer across all steps. A
  step that ends for any reason but its own token limit ("stop", a stop
  string) ends the answer; proposals still streaming then are cut (note
  "the answer ended first").

The references are a log that only grows at its end (`ChunkLog`): entries
like "Answer 1 (so far): ...", later "Answer 1 (continued): ...", and
"(complete)" once an answer has finished, in one system message after the
instruction, which says that some answers are cut off mid-way. Each
step's prompt therefore starts with the previous step's system message
unchanged, so vLLM's prefix cache serves that part from the previous step
and only the new chunks, the conversation and the answer so far are
prefilled again. Answers are numbered by first appearance in the log.
When the references outgrow the aggregator's window they are trimmed as
for any aggregator (`references.fit`), which rewrites earlier entries and
costs that step its cached prefix. An answer that fills the window ends
with finish reason "length".

The caller sees one stream of `Token` events across steps; proposals as
they end and the layer's `LayerDone` come between steps (all before the
final `Done`, which pipeline.py builds from `parts` and `finish_reason`).

Left out: the proposers' streams and their deadlines (streams.py).
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Callable, Sequence
from contextlib import aclosing
from dataclasses import replace

from moa_local.errors import InvalidRequest
from moa_local.metrics import Metrics
from moa_local.mixture.cutoff import capped_texts
from moa_local.mixture.events import Event, LayerDone, Token
from moa_local.mixture.references import DEFAULT_REFERENCE_PROMPT, Message, fit
from moa_local.mixture.spec import RunSpec, Sampling
from moa_local.mixture.streams import ProposalStreams, SampleStream
from moa_local.mixture.trace import AgentTrace, RequestTrace, StepTrace

PARTIAL_NOTE = (
    "Some answers are cut off mid-way: they were still being written. Each entry below is a piece of one "
    "answer, in order; an answer is whole only once marked (complete)."
)
EARLY_NOTE = "early aggregation"
ENDED_NOTE = "the answer ended first"
WINDOW_NOTE = "the answer filled the context window"

StepCall = Callable[[list[Message], Sampling, AgentTrace], AsyncGenerator[tuple[int, str], None]]


def partial_instruction(reference_prompt: str | None) -> str:
    """The aggregator's instruction when its references may be partial."""
    return f"{reference_prompt or DEFAULT_REFERENCE_PROMPT}\n{PARTIAL_NOTE}"


class ChunkLog:
    """The append-only reference log: `take` only ever adds entries at the end of `entries`."""

    def __init__(self) -> None:
        self.entries: list[str] = []
        self._numbers: dict[int, int] = {}  # sample position -> answer number
        self._logged: dict[int, int] = {}  # sample position -> pieces in the log
        self._closed: set[int] = set()

    @property
    def answers(self) -> int:
        return len(self._numbers)

    def take(self, samples: Sequence[SampleStream]) -> None:
        """Log what each sample streamed since the last call."""
        for position, sample in enumerate(samples):
            if position in self._closed:
                continue
            new = "".join(sample.pieces[self._logged.get(position, 0) :]).strip()
            number = self._numbers.get(position)
            if not new and (number is None or not sample.done):  # whitespace waits for the text after it
                if sample.done:
                    self._closed.add(position)
                continue
            if number is None:
                number = self._numbers[position] = len(self._numbers) + 1
                label = "complete" if sample.complete else "so far"
            else:
                label = "continued, complete" if sample.complete else "continued"
            if not new:
                label = "complete" if sample.complete else ""
            if label:
                self.entries.append(f"Answer {number} ({label})" + (f": {new}" if new else ""))
            self._logged[position] = sample.tokens
            if sample.done:
                self._closed.add(position)


class Staircase:
    """The aggregator's steps over the last layer's streams; `parts` and `finish_reason` are the answer."""

    def __init__(
        self, spec: RunSpec, conversation: Sequence[Message], streams: ProposalStreams, call: StepCall,
        trace: RequestTrace, metrics: Metrics, *, request_start: float, deadline: float, context_window: int | None,
    ) -> None:  # fmt: skip
        self.spec = spec
        self.conversation = list(conversation)
        self.streams = streams
        self.call = call
        self.trace = trace
        self.metrics = metrics
        self.request_start = request_start
        self.deadline = deadline
        self.context_window = context_window
        self.log = ChunkLog()
        self.parts: list[str] = []
        self.finish_reason: str | None = None
        self._layer_done = False

    async def run(self) -> AsyncGenerator[Event, None]:
        aggregation, streams = self.spec.aggregation, self.streams
        try:
            streams.start()
            await streams.wait_for_start(aggregation.chunk_tokens, aggregation.start_after_s)
            if aggregation.start == "early":
                await streams.cut(EARLY_NOTE)
            summary = AgentTrace(self.spec.aggregator.endpoint, "aggregator")
            self.trace.aggregator = summary
            total, used = self.spec.aggregator.sampling.max_tokens, 0
            while True:
                final = streams.all_done  # then this step may use the rest of the budget
                self.log.take(streams.samples)
                for event in self._progress(final):
                    yield event
                remaining = None if total is None else total - used
                if final:
                    want = remaining
                else:
                    want = aggregation.step_tokens if remaining is None else min(aggregation.step_tokens, remaining)
                messages, sampling = self._request(want, summary)
                if messages is None:
                    break  # the answer filled the window
                step = StepTrace(
                    len(self.trace.steps) + 1, time.perf_counter() - streams.started_at,
                    [sample.tokens for sample in streams.samples],
                )  # fmt: skip
                self.trace.steps.append(step)
                call = AgentTrace(self.spec.aggregator.endpoint, "aggregator")
                pieces = 0
                try:
                    async with (
                        aclosing(self.call(messages, sampling, call)) as tokens,
                        aclosing(capped_texts(tokens, self.spec, call, self.deadline)) as texts,
                    ):
                        async for text in texts:
                            if self.trace.ttft_s is None:
                                self.trace.ttft_s = time.perf_counter() - self.request_start
                            self.parts.append(text)
                            pieces += 1
                            yield Token(text)
                finally:
                    _record(step, call, summary)
                used += call.completion_tokens or pieces
                self.finish_reason = step.finish_reason
                if self.finish_reason != "length" or final or not pieces or (total is not None and used >= total):
                    break
            if not streams.all_done:
                await streams.cut(ENDED_NOTE)
            for event in self._progress(True):
                yield event
            self.metrics.observe_steps(self.spec.model, len(self.trace.steps))
        finally:
            await streams.aclose()  # every proposer's call is closed, whatever ended the run

    def _request(self, want: int | None, summary: AgentTrace) -> tuple[list[Message] | None, Sampling]:
        """The next step's messages (None: no room left for more answer) and sampling."""
        prefix = "".join(self.parts)
        conversation = [*self.conversation, {"role": "assistant", "content": prefix}] if prefix else self.conversation
        step = self.spec.aggregator
        try:
            fitted = fit(
                conversation, self.log.entries, instruction=partial_instruction(self.spec.reference_prompt),
                system_prompt=step.system_prompt, max_tokens=want, context_window=self.context_window,
                endpoint=step.endpoint, numbered=False,
            )  # fmt: skip
        except InvalidRequest:
            if not prefix:
                raise  # the conversation itself does not fit: refused as for any aggregator
            self.finish_reason, summary.note = "length", WINDOW_NOTE
            return None, step.sampling
        if fitted.note and not summary.note:
            summary.note = fitted.note
        return fitted.messages, replace(step.sampling, max_tokens=fitted.max_tokens, continue_final=bool(prefix))

    def _progress(self, all_done: bool) -> list[Event]:
        """Proposals that ended since the last step; the layer's `LayerDone` once all have (and are logged)."""
        events: list[Event] = list(self.streams.finished())
        if all_done and not self._layer_done:
            self._layer_done = True
            layer = self.streams.trace
            layer.proposals_used = self.log.answers
            self.metrics.observe_layer(self.spec.model, layer.index, layer.duration_s, layer.proposals_used)
            events.append(LayerDone(layer))
        return events


def _record(step: StepTrace, call: AgentTrace, summary: AgentTrace) -> None:
    """One step's call into its step record and into the aggregator's summary (the sum of its steps)."""
    step.status, step.latency_s, step.ttft_s = call.status, call.latency_s, call.ttft_s
    step.prompt_tokens, step.completion_tokens = call.prompt_tokens, call.completion_tokens
    step.finish_reason = call.finish_reasons[0] if call.finish_reasons else None
    summary.status, summary.error = call.status, call.error
    summary.latency_s += call.latency_s
    if summary.ttft_s is None:
        summary.ttft_s = call.ttft_s
    summary.prompt_tokens += call.prompt_tokens
    summary.completion_tokens += call.completion_tokens
    summary.attempts += call.attempts
    summary.finish_reasons = list(call.finish_reasons)
