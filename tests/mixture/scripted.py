"""A fake `Caller` whose calls stream exactly what the test feeds them, when it feeds them.

Each call gets a queue: the test pushes `piece(text)`, `end()`, `fail()`
items to a call (found by endpoint and number, waited for by bounded
polling) and the call yields them in that order, so chunk arrival orders
are the test's to choose and nothing depends on timing. Calls of an
endpoint listed in `replies` are answered from it instead, one list of
items per call (the aggregator's steps, say). Each AgentTrace is filled
as the endpoint pool fills it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any

from moa_local.errors import BackendError, EndpointStatusError
from moa_local.mixture.references import Message
from moa_local.mixture.spec import Sampling
from moa_local.mixture.trace import AgentTrace

PROMPT_TOKENS = 10
Item = tuple[Any, ...]


def piece(text: str, sample: int = 0) -> Item:
    return ("piece", sample, text)


def end(reason: str = "stop") -> Item:
    return ("end", reason)


def fail(reason: str = "boom") -> Item:
    return ("fail", reason)


def words(text: str, sample: int = 0) -> list[Item]:
    """The text as pieces, one a word (a space before each but the first), as an engine streams tokens."""
    return [piece(w if i == 0 else " " + w, sample) for i, w in enumerate(text.split(" "))]


@dataclass
class ScriptedCall:
    endpoint: str
    messages: list[Message]
    sampling: Sampling
    trace: AgentTrace
    queue: asyncio.Queue[Item] = field(default_factory=asyncio.Queue)
    cancelled: bool = False
    outcome: str | None = None

    @property
    def system(self) -> str:
        assert self.messages[0]["role"] == "system"
        return str(self.messages[0]["content"])

    def push(self, *items: Item) -> None:
        for item in items:
            self.queue.put_nowait(item)


@dataclass
class ScriptedCaller:
    replies: dict[str, list[list[Item]]] = field(default_factory=dict)
    windows: dict[str, int] = field(default_factory=dict)
    calls: list[ScriptedCall] = field(default_factory=list)

    def context_window(self, endpoint: str) -> int | None:
        return self.windows.get(endpoint)

    def to(self, endpoint: str) -> list[ScriptedCall]:
        return [call for call in self.calls if call.endpoint == endpoint]

    async def call(self, endpoint: str, number: int = 1, timeout_s: float = 5.0) -> ScriptedCall:
        """The `number`-th call to `endpoint`, once it was made (bounded polling)."""
        for _ in range(int(timeout_s / 0.005)):
            calls = self.to(endpoint)
            if len(calls) >= number:
                return calls[number - 1]
            await asyncio.sleep(0.005)
        raise AssertionError(f"no call {number} to {endpoint} within {timeout_s}s; calls: {self.calls}")

    async def stream(
        self, endpoint: str, messages: list[Message], sampling: Sampling, trace: AgentTrace, order: float = 0.0
    ) -> AsyncGenerator[tuple[int, str], None]:
        call = ScriptedCall(endpoint, messages, sampling, trace)
        self.calls.append(call)
        scripted = self.replies.get(endpoint)
        if scripted:
            call.push(*scripted.pop(0))
        start = time.perf_counter()
        trace.finish_reasons = [None] * sampling.n
        trace.attempts = 1
        try:
            while True:
                item = await call.queue.get()
                if item[0] == "piece":
                    if trace.ttft_s is None:
                        trace.ttft_s = time.perf_counter() - start
                    trace.completion_tokens += 1
                    yield item[1], item[2]
                elif item[0] == "end":
                    trace.prompt_tokens = PROMPT_TOKENS
                    trace.finish_reasons = [item[1]] * sampling.n
                    trace.status = "ok"
                    return
                else:
                    raise EndpointStatusError(endpoint, f"engine answered 500: {item[1]}", upstream_status=500)
        except BackendError as exc:
            trace.status, trace.error = "error", exc.reason
            raise
        except (asyncio.CancelledError, GeneratorExit):
            call.cancelled = True
            if trace.status == "pending":
                trace.status = "cancelled"
            raise
        finally:
            trace.latency_s = time.perf_counter() - start
            call.outcome = trace.status
