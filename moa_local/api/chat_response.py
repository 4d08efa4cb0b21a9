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

A client that stops reading without going away would block a send for as
long as it likes (its TCP buffers full). One watchdog per response, the
wait on the producer and the watcher, bounds the whole answer by the
request's cap plus `SEND_GRACE_S` (the pipeline's own deadline fires at the
cap and its error event needs a moment to go out): past it the producer is
cancelled wherever it is, the pipeline is told the deadline passed (so
every upstream call is closed and the request counts as `timeout`), and
the slot is free. A send that fails means the client left: the outcome is
`cancelled` and nothing more is sent.
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

from starlette.types import Message, Receive, Scope, Send

from moa_local.api.error_response import error_event, internal_error, send_error
from moa_local.api.protocol import ChatRequest, completion_object
from moa_local.errors import DeadlineError, RequestFailed
from moa_local.mixture.events import Done, Event, LayerDone, Token
from moa_local.mixture.trace import RequestTrace

logger = logging.getLogger("moa_local.gateway")

SEND_GRACE_S = 1.0  # past the request's cap, for the pipeline's own 504 or error event to go out


class _ClientGone(Exception):
    """The server could not deliver a message: the client has left."""


@dataclass
class Outcome:
    """What the gateway logs and counts once the response is over."""

    status: int = 0
    outcome: str = "error"
    trace: RequestTrace | None = None
    error: str | None = None
    answer: str | None = None  # logged only with gateway.log_content


class ChatResponse:
    def __init__(
        self, events: AsyncGenerator[Event, None], request: ChatRequest, request_id: str, cap_s: float
    ) -> None:
        self.events = events
        self.request = request
        self.id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        self.request_id = request_id
        self.cap_s = cap_s  # the request's deadline (the mixture's timeout_s; a pass-through's backstop)
        self.created = int(time.time())
        self.result = Outcome()
        self.proposals_used: list[int] = []
        self._send: Send | None = None
        self._started = False  # the 200 and the first event went out
        self._settled = False  # the answer arrived or the request failed: the outcome is decided

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._send = send
        producer = asyncio.create_task(self._produce())
        watcher = asyncio.create_task(_disconnected(receive))
        overdue = False
        try:
            await asyncio.wait({producer, watcher}, timeout=self.cap_s + SEND_GRACE_S,
                               return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
            overdue = not producer.done() and not watcher.done()
        finally:
            if not producer.done():  # the client went away, stopped reading, or we are shutting down
                producer.cancel()
                with suppress(asyncio.CancelledError):
                    await producer
                self._stopped(overdue)
            elif not producer.cancelled() and producer.exception() is not None:  # a bug of ours
                self.result.outcome = "error"
                logger.error("request %s failed with an internal error", self.request_id,
                             exc_info=producer.exception())  # fmt: skip
            watcher.cancel()
            with suppress(asyncio.CancelledError):
                await watcher
            if overdue:  # closes every upstream call; the pipeline counts the request as a timeout
                with suppress(DeadlineError):
                    await self.events.athrow(DeadlineError(self.result.error or "deadline"))
            await self.events.aclose()

    def _stopped(self, overdue: bool) -> None:
        """Record why the producer was stopped before it was done, as the pipeline will count it."""
        if overdue and (not self._settled or self.result.outcome == "ok"):  # the pipeline is told below
            self.result.outcome = "timeout"
            self.result.error = f"the client did not take the answer within the {self.cap_s:g}s cap"
            self.result.status = self.result.status or 504
        elif not self._settled:
            self.result.outcome = "cancelled"

    async def _produce(self) -> None:
        try:
            try:
                await self._relay()
            except RequestFailed as exc:
                await self._fail(exc)
            except _ClientGone:
                raise
            except Exception:
                logger.exception("request %s failed with an internal error", self.request_id)
                await self._fail(internal_error())
        except _ClientGone:  # nothing more can reach the client
            if not self._settled:
                self.result.outcome = "cancelled"

    async def _relay(self) -> None:
        """Turn the pipeline's events into the response."""
        async for event in self.events:
            if isinstance(event, Token):
                if not self.request.stream:
                    continue
                if not self._started:
                    await self._start_stream()
                await self._deliver(_body(self._chunk_line(event.text)))
            elif isinstance(event, LayerDone):
                self.proposals_used.append(event.layer.proposals_used)
            elif isinstance(event, Done):
                self.result.trace = event.trace
                self.result.answer = event.answer
                self.result.outcome = "ok"  # as the pipeline counts it: the answer is complete
                self._settled = True
                if not self.request.stream:
                    await self._send_completion(event)
                    return
                if not self._started:
                    await self._start_stream()
                await self._finish_stream(event)
                return

    async def _deliver(self, message: Message) -> None:
        """Send one ASGI message; a failure means the client is gone."""
        assert self._send is not None
        try:
            await self._send(message)
        except Exception as exc:  # whatever the server raises for a connection it cannot write to
            raise _ClientGone() from exc

    async def _fail(self, exc: RequestFailed) -> None:
        self._settled = True
        self.result.error = exc.message
        self.result.outcome = "timeout" if exc.status == 504 else "error"
        if self._started:  # too late for a status code: an error event, as vLLM and OpenAI do
            self.result.status = 200
            await self._deliver(_body(error_event(exc) + b"data: [DONE]\n\n", more=False))
            return
        self.result.status = exc.status
        await send_error(self._deliver, exc, self.request_id)

    def _headers(self, content_type: bytes) -> list[tuple[bytes, bytes]]:
        headers = [(b"content-type", content_type), (b"x-request-id", self.request_id.encode())]
        if self.proposals_used:  # proposals each layer passed on, e.g. "2,2"
            headers.append((b"x-moa-proposals", ",".join(map(str, self.proposals_used)).encode()))
        return headers

    async def _start_stream(self) -> None:
        self.result.status = 200
        self._started = True
        headers = self._headers(b"text/event-stream; charset=utf-8")
        headers += [(b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]
        await self._deliver({"type": "http.response.start", "status": 200, "headers": headers})
        first = {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
        await self._deliver(_body(self._event([first])))

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

    async def _finish_stream(self, done: Done) -> None:
        moa = {"moa": done.trace.as_dict()} if self.request.wants_trace else {}
        last = {"index": 0, "delta": {}, "logprobs": None, "finish_reason": done.finish_reason or "stop"}
        if self.request.include_usage:
            await self._deliver(_body(self._event([last])))
            await self._deliver(_body(self._event([], usage=done.trace.usage().as_openai(), **moa)))
        else:
            await self._deliver(_body(self._event([last], **moa)))
        await self._deliver(_body(b"data: [DONE]\n\n", more=False))

    async def _send_completion(self, done: Done) -> None:
        payload = completion_object(self.id, self.request, done, self.created)
        body = json.dumps(payload).encode()
        headers = self._headers(b"application/json")
        headers.append((b"content-length", str(len(body)).encode()))
        self.result.status = 200
        self._started = True
        await self._deliver({"type": "http.response.start", "status": 200, "headers": headers})
        await self._deliver(_body(body, more=False))


def _body(data: bytes, more: bool = True) -> dict[str, Any]:
    return {"type": "http.response.body", "body": data, "more_body": more}


async def _disconnected(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
