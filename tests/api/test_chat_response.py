"""The chat response when the client misbehaves: sends that fail, a client that stops reading.

The first tests drive a `ChatResponse` directly with ASGI `send` and
`receive` functions passed in (a failing send, a send that never returns,
as a full TCP buffer makes it) and a scripted event stream standing in for
the pipeline. The last one is the same fault for real: a raw socket that
asks for a stream and never reads it, against a fake engine streaming
large tokens, behind the real gateway.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import socket
from collections.abc import AsyncGenerator
from typing import Any

import pytest

from moa_local.api.chat_response import SEND_GRACE_S, ChatResponse
from moa_local.api.protocol import ChatRequest
from moa_local.errors import DeadlineError
from moa_local.mixture.events import Done, Event, Token
from moa_local.mixture.trace import RequestTrace
from tests.support.gateway_fixtures import HELLO, StackFactory, answer

Message = dict[str, Any]


async def script(seen: list[str], tokens: int = 3, fail: Exception | None = None) -> AsyncGenerator[Event, None]:
    """The pipeline's part: a few tokens, then the answer (or `fail`); records how it ended in `seen`."""
    try:
        for i in range(tokens):
            yield Token(f"w{i} ")
        if fail is not None:
            raise fail
        yield Done("w0 w1 w2 ", "stop", RequestTrace("mix"))
        seen.append("done")
    except BaseException as exc:
        seen.append(type(exc).__name__)
        raise


def chat(stream: bool = True) -> ChatRequest:
    return ChatRequest.model_validate({"model": "mix", "messages": HELLO, "stream": stream})


async def never_disconnects() -> Message:
    await asyncio.Event().wait()
    raise AssertionError("unreachable")


class Unretrieved:
    """Collects what the event loop reports about tasks whose exception nobody retrieved."""

    def __init__(self) -> None:
        self.reports: list[str] = []
        asyncio.get_running_loop().set_exception_handler(lambda loop, context: self.reports.append(context["message"]))

    async def collected(self) -> list[str]:
        await asyncio.sleep(0)  # let the loop drop its last references to finished tasks
        gc.collect()  # a task reports its unretrieved exception when it is destroyed
        return self.reports


async def test_fault_a_failing_send_means_the_client_left(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="moa_local.gateway")
    unretrieved = Unretrieved()
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)
        if len(sent) >= 2:  # the status line went out; the connection broke after it
            raise OSError("connection reset by peer")

    seen: list[str] = []
    response = ChatResponse(script(seen), chat(), "req-gone", cap_s=30)
    await asyncio.wait_for(response({}, never_disconnects, send), 10)
    assert len(sent) == 2, "nothing is sent after a send failed"
    assert response.result.outcome == "cancelled"
    assert seen == ["GeneratorExit"]  # the pipeline was closed, so its upstream calls are
    assert "internal error" not in caplog.text
    assert await unretrieved.collected() == []


async def test_fault_a_failing_error_send_is_not_sent_again(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="moa_local.gateway")
    unretrieved = Unretrieved()
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)
        raise OSError("connection reset by peer")

    seen: list[str] = []
    response = ChatResponse(script(seen, tokens=0, fail=DeadlineError("too slow")), chat(), "req-late", cap_s=30)
    await asyncio.wait_for(response({}, never_disconnects, send), 10)
    assert [m["type"] for m in sent] == ["http.response.start"]
    assert (response.result.outcome, response.result.status) == ("timeout", 504)  # as the pipeline counted it
    assert "internal error" not in caplog.text and await unretrieved.collected() == []


async def test_a_bug_is_a_500_with_the_request_id_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="moa_local.gateway")
    unretrieved = Unretrieved()
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    response = ChatResponse(script([], tokens=0, fail=KeyError("oops")), chat(), "req-bug", cap_s=30)
    await asyncio.wait_for(response({}, never_disconnects, send), 10)
    start, body = sent
    assert start["status"] == 500 and (b"x-request-id", b"req-bug") in start["headers"]
    assert json.loads(body["body"])["error"]["type"] == "server_error"
    assert caplog.text.count("request req-bug failed with an internal error") == 1
    assert await unretrieved.collected() == []


@pytest.mark.parametrize("stream", [True, False])
async def test_fault_a_send_that_never_returns_ends_at_the_cap(stream: bool) -> None:
    sent: list[Message] = []

    async def send(message: Message) -> None:  # the client stopped reading: its TCP buffers are full
        sent.append(message)
        if len(sent) >= 2:
            await asyncio.Event().wait()

    seen: list[str] = []
    response = ChatResponse(script(seen), chat(stream), "req-stuck", cap_s=0.1)
    await asyncio.wait_for(response({}, never_disconnects, send), 0.1 + SEND_GRACE_S + 10)
    assert len(sent) == 2
    assert (response.result.outcome, response.result.status) == ("timeout", 200)
    assert "0.1s" in (response.result.error or "")
    # The pipeline was told its deadline passed (it closes its upstream calls and counts a timeout).
    assert seen == ["DeadlineError"]


def test_fault_a_client_that_never_reads_is_cut_off_at_the_cap(own_stack: StackFactory) -> None:
    cap_s = 3.0
    s = own_stack({"max_inflight": 2}, timeout_s=cap_s)
    gw = s.gw
    # 6,000 tokens of 4 kB, one a millisecond at most: the socket buffers on the way are full within a
    # second (the gateway's sends block), and the engine is still streaming when the cap has passed.
    s.agg.set(reply=" ".join(["x" * 4000] * 6000), token_delay_ms=1)
    body = json.dumps({"model": "mix", "messages": HELLO, "stream": True, "max_tokens": 10_000}).encode()
    stuck = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        stuck.connect(("127.0.0.1", gw.port))
        stuck.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )  # ... and never reads a byte of the answer
        gw.wait_for(lambda: len(s.agg.chat_bodies()) == 1 and gw.gateway.inflight == 1, what="stream under way")
        # Meanwhile other clients are served.
        reply = gw.client().chat.completions.create(model="p1", messages=HELLO)
        assert reply.choices[0].message.content == answer("p1-model", "hello")
        # At the cap (and its grace) the request ends: slot free, upstream closed, counted as a timeout.
        bound = cap_s + SEND_GRACE_S + 5
        gw.wait_for(lambda: gw.metric("moa_gateway_inflight") == 0, bound, "the stuck request let go")
        assert gw.gateway.inflight == 0
        assert s.agg.wait_for_event("disconnect", timeout_s=bound).stage == "stream"
        gw.wait_for(lambda: gw.metric("moa_requests_total", mixture="mix", outcome="timeout") == 1, what="counted")
        assert gw.metric("moa_requests_total", mixture="mix", outcome="cancelled") == 0
        assert all(gw.metric("moa_inflight", endpoint=e) == 0 for e in ("p1", "p2", "agg"))
    finally:
        stuck.close()
