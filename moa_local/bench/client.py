"""One benchmark request: a streamed chat completion timed chunk by chunk.

`send` posts a streaming chat completion with plain httpx (lighter than the
SDK, so the load generator stays cheap on a small machine), reads the SSE
events as they arrive, and always returns a `RequestRecord`: failures of
any kind (refused connection, HTTP error, an error event mid-stream, a
stream cut short, the overall timeout) become the record's `error`, never
an exception. Time to first token is taken at the first non-empty content
delta. When the target is the gateway and `trace` is on, the `moa` object
of the final chunk supplies the orchestration overhead, the critical path
and the per-layer times.

Left out on purpose: retries (a benchmark reports failures, it does not
hide them) and non-streaming requests.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any

import httpx

from moa_local.bench.dataset import Conversation
from moa_local.bench.stats import RequestRecord
from moa_local.errors import error_body_message
from moa_local.urls import api_base


@dataclass(frozen=True)
class Target:
    """What every request of a segment asks, and of whom."""

    url: str  # base URL: http://host:port or http://host:port/v1
    model: str
    max_tokens: int
    temperature: float | None = None
    trace: bool = True  # ask the gateway for its `moa` trace (leave off for a bare engine)
    api_key: str | None = None
    timeout_s: float = 300.0
    n: int = 1  # samples per request (engines only: the gateway refuses n > 1)

    @property
    def chat_url(self) -> str:
        return f"{api_base(self.url)}/chat/completions"

    def body(self, messages: Conversation) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "max_tokens": self.max_tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if self.temperature is not None:
            body["temperature"] = self.temperature
        if self.n != 1:
            body["n"] = self.n
        if self.trace:
            body["moa"] = {"trace": True}
        return body

    def headers(self) -> dict[str, str]:
        return auth_headers(self.api_key)


def auth_headers(api_key: str | None) -> dict[str, str]:
    return {"authorization": f"Bearer {api_key}"} if api_key else {}


class _Stream:
    """What the SSE events of one answer said, gathered as they arrive."""

    def __init__(self, record: RequestRecord, started: float) -> None:
        self.record = record
        self.started = started
        self.last_token: float | None = None
        self.chunks = 0
        self.usage: dict[str, Any] | None = None
        self.trace: dict[str, Any] | None = None
        self.done = False

    def event(self, data: str) -> None:
        if data == "[DONE]":
            self.done = True
            return
        event = json.loads(data)
        if not isinstance(event, dict):
            raise ValueError("an SSE event that is not a JSON object")
        error = event.get("error")
        if isinstance(error, dict) or event.get("object") == "error":
            message = (error if isinstance(error, dict) else event).get("message", "")
            self.record.error = f"error event: {message}"[:300]
            return
        if isinstance(event.get("usage"), dict):
            self.usage = event["usage"]
        if isinstance(event.get("moa"), dict):
            self.trace = event["moa"]
        for choice in event.get("choices") or ():
            delta = choice.get("delta") if isinstance(choice, dict) else None
            if isinstance(delta, dict) and delta.get("content"):
                self._token(time.perf_counter())

    def _token(self, now: float) -> None:
        self.chunks += 1
        if self.last_token is None:
            self.record.ttft_s = now - self.started
        else:
            self.record.itl_s.append(now - self.last_token)
        self.last_token = now

    def finish(self) -> None:
        record = self.record
        usage = self.usage or {}
        record.prompt_tokens = _int(usage.get("prompt_tokens"))
        record.generated_tokens = _int(usage.get("completion_tokens"))
        record.completion_tokens = record.generated_tokens
        if self.trace is not None:
            _read_trace(record, self.trace)
        if record.completion_tokens is None:
            record.completion_tokens = self.chunks
        if record.error is None and not self.done:
            record.error = "stream ended without [DONE]"


async def send(
    client: httpx.AsyncClient, target: Target, messages: Conversation, record: RequestRecord, origin: float
) -> RequestRecord:
    """Run one request and fill `record`; `origin` is the segment's perf_counter start. Never raises."""
    started = time.perf_counter()
    record.start_s = started - origin
    stream = _Stream(record, started)
    try:
        async with asyncio.timeout(target.timeout_s):
            body, headers = target.body(messages), target.headers()
            async with client.stream("POST", target.chat_url, json=body, headers=headers) as response:
                record.status = response.status_code
                if response.status_code != 200:
                    record.error = f"{response.status_code}: {_error_message(await response.aread())}"
                else:
                    async for line in response.aiter_lines():
                        if line.startswith("data:"):
                            stream.event(line[5:].strip())
        stream.finish()
    except TimeoutError:
        record.error = f"timeout: no complete answer within {target.timeout_s:g}s"
    except httpx.TimeoutException as exc:
        record.error = f"timeout: {type(exc).__name__}"
    except httpx.HTTPError as exc:
        record.error = f"{type(exc).__name__}: {exc}"[:300]
    except ValueError as exc:  # a malformed SSE event (json.JSONDecodeError is a ValueError)
        record.error = f"bad stream: {exc}"[:300]
    except (TypeError, AttributeError) as exc:  # well-formed JSON of an unexpected shape
        record.error = f"bad stream: unexpected event shape ({exc})"[:300]
    record.e2e_s = time.perf_counter() - started
    record.ok = record.error is None
    return record


def _read_trace(record: RequestRecord, trace: dict[str, Any]) -> None:
    """Overhead, critical path, layer times and the answer's own tokens from the gateway's trace."""
    overhead = trace.get("overhead_s")
    record.overhead_s = float(overhead) if isinstance(overhead, int | float) else None
    slowest = []
    for layer in trace.get("layers") or ():
        record.layer_s.append(float(layer.get("duration_s") or 0.0))
        slowest.append(max((float(agent.get("latency_s") or 0.0) for agent in layer.get("agents") or ()), default=0.0))
    steps = [step for step in trace.get("steps") or () if isinstance(step, dict)]
    aggregator = trace.get("aggregator")
    if steps and slowest:  # early or staircase: the aggregator overlapped the last layer from its first step on
        earlier = sum(slowest[:-1])
        record.critical_path_s = earlier + _seconds(steps[0].get("at_s"))
        first = next((step for step in steps if isinstance(step.get("ttft_s"), int | float)), None)
        record.path_ttft_s = None if first is None else earlier + _seconds(first.get("at_s")) + first["ttft_s"]
    else:
        record.critical_path_s = sum(slowest)
        if isinstance(aggregator, dict) and isinstance(aggregator.get("ttft_s"), int | float):
            record.path_ttft_s = record.critical_path_s + float(aggregator["ttft_s"])
    if isinstance(aggregator, dict):
        record.critical_path_s += _seconds(aggregator.get("latency_s"))
        answer_tokens = _int(aggregator.get("completion_tokens"))
        if answer_tokens is not None:
            record.completion_tokens = answer_tokens


def _seconds(value: Any) -> float:
    return float(value or 0.0)


def _error_message(body: bytes) -> str:
    try:
        data = json.loads(body)
    except ValueError:
        return body[:200].decode("utf-8", "replace")
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict):
        return (error_body_message(error) or "")[:300]
    return str(data)[:200]


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
