"""One chat completion as an ASGI response: runs the pipeline, streams or not.

The response holds back its status line until the aggregator's first token
(or the final answer) exists, so a missed quorum or a failed backend still
gets a proper 5xx with the OpenAI envelope instead of a broken stream; time
to first token is unchanged, since that token is what it waits for. While
the request runs, a watcher listens for the client going away; it cancels
the run at once, which closes every upstream call of the request (closing
an upstream stream makes vLLM abort it and free its KV cache). The error
bytes themselves come from `error_response.py`; the log line and the
in-flight count are the chat route's.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncGenerator
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

from starlette.types import Receive, Scope, Send

from moa_local.api.error_response import error_event, internal_error, send_error
from moa_local.api.protocol import ChatRequest
from moa_local.errors import RequestFailed
from moa_local.mixture.events import Done, Event, LayerDone, Token
from moa_local.mixture.trace import RequestTrace

logger = logging.getLogger("moa_local.gateway")


@dataclass
class Outcome:
    """What the gateway logs and counts once the response is over."""

    status: int = 0
    outcome: str = "error"
    trace: RequestTrace | None = None
    error: str | None = None
    answer: str | None = None  # logged only with gateway.log_content


class ChatResponse:
    def __init__(self, events: AsyncGenerator[Event, None], request: ChatRequest, request_id: str) -> None:
        self.events = events
        self.request = request
        self.id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        self.request_id = request_id
        self.created = int(time.time())
        self.result = Outcome()
        self.proposals_used: list[int] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        producer = asyncio.create_task(self._produce(send))
        watcher = asyncio.create_task(_disconnected(receive))
        try:
            await asyncio.wait({producer, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not producer.done():  # the client went away (or we are shutting down)
                producer.cancel()
                self.result.outcome = "cancelled"
                with suppress(asyncio.CancelledError):
                    await producer
            watcher.cancel()
            with suppress(asyncio.CancelledError):
                await watcher
            await self.events.aclose()

    async def _produce(self, send: Send) -> None:
        started = False
        try:
            async for event in self.events:
                if isinstance(event, Token):
                    if not self.request.stream:
                        continue
                    if not started:
                        await self._start_stream(send)
                        started = True
                    await send(_body(self._chunk_line(event.text)))
                elif isinstance(event, LayerDone):
                    self.proposals_used.append(event.layer.proposals_used)
                elif isinstance(event, Done):
                    self.result.trace = event.trace
                    self.result.answer = event.answer
                    self.result.outcome = "ok"
                    if not self.request.stream:
                        await self._send_completion(send, event)
                        return
                    if not started:
                        await self._start_stream(send)
                        started = True
                    await self._finish_stream(send, event)
                    return
        except RequestFailed as exc:
            await self._fail(send, exc, started)
        except Exception:
            logger.exception("request %s failed with an internal error", self.request_id)
            await self._fail(send, internal_error(), started)

    async def _fail(self, send: Send, exc: RequestFailed, started: bool) -> None:
        self.result.error = exc.message
        self.result.outcome = "timeout" if exc.status == 504 else "error"
        if started:  # too late for a status code: an error event, as vLLM and OpenAI do
            self.result.status = 200
            await send(_body(error_event(exc) + b"data: [DONE]\n\n", more=False))
            return
        self.result.status = exc.status
        await send_error(send, exc, self.request_id)

    def _headers(self, content_type: bytes) -> list[tuple[bytes, bytes]]:
        headers = [(b"content-type", content_type), (b"x-request-id", self.request_id.encode())]
        if self.proposals_used:  # proposals each layer passed on, e.g. "2,2"
            headers.append((b"x-moa-proposals", ",".join(map(str, self.proposals_used)).encode()))
        return headers

    async def _start_stream(self, send: Send) -> None:
        self.result.status = 200
        headers = self._headers(b"text/event-stream; charset=utf-8")
        headers += [(b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        first = {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
        await send(_body(self._event([first])))

    def _chunk_line(self, text: str) -> bytes:
        return (
            f'data: {{"id":"{self.id}","object":"chat.completion.chunk","created":{self.created},'
            f'"model":{json.dumps(self.request.model)},"choices":[{{"index":0,"delta":{{"content":'
            f'{json.dumps(text)}}},"logprobs":null,"finish_reason":null}}]}}\n\n'
        ).encode()

    def _event(self, choices: list[dict[str, Any]], **extra: Any) -> bytes:
        chunk = {
            "id": self.id, "object": "chat.completion.chunk", "created": self.created,
            "model": self.request.model, "choices": choices, **extra,
        }  # fmt: skip
        return f"data: {json.dumps(chunk)}\n\n".encode()

    async def _finish_stream(self, send: Send, done: Done) -> None:
        moa = {"moa": done.trace.as_dict()} if self.request.wants_trace else {}
        last = {"index": 0, "delta": {}, "logprobs": None, "finish_reason": done.finish_reason or "stop"}
        if self.request.include_usage:
            await send(_body(self._event([last])))
            await send(_body(self._event([], usage=done.trace.usage().as_openai(), **moa)))
        else:
            await send(_body(self._event([last], **moa)))
        await send(_body(b"data: [DONE]\n\n", more=False))

    async def _send_completion(self, send: Send, done: Done) -> None:
        payload: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.request.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": done.answer},
                    "logprobs": None,
                    "finish_reason": done.finish_reason or "stop",
                }
            ],
            "usage": done.trace.usage().as_openai(),
        }
        if self.request.wants_trace:
            payload["moa"] = done.trace.as_dict()
        body = json.dumps(payload).encode()
        headers = self._headers(b"application/json")
        headers.append((b"content-length", str(len(body)).encode()))
        self.result.status = 200
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send(_body(body, more=False))


def _body(data: bytes, more: bool = True) -> dict[str, Any]:
    return {"type": "http.response.body", "body": data, "more_body": more}


async def _disconnected(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
