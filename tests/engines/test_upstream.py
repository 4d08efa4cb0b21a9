"""The lean upstream client against scripted HTTP servers on loopback.

Each fake server here is a plain asyncio server that answers with exactly
the bytes a test gives it (a fake on purpose: framing, kept-alive and
closed connections, hangs and garbage are what is tested). The pool's
behaviour against the fake engine and real vLLM is tested elsewhere.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest

from moa_local.engines.upstream import CallTimeout, ConnectFailed, ConnectionBroken, Upstream

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]

SSE = b'data: {"a": 1}\n\ndata: [DONE]\n\n'


def chunked(*parts: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
    )
    return head, await reader.readexactly(length)


class Scripted:
    """Counts connections; `handler(reader, writer, connection_number)` serves each connection."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.port = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.handler(reader, writer, self.connections)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


@asynccontextmanager
async def scripted(handler: Handler) -> AsyncIterator[tuple[Scripted, Upstream]]:
    script = Scripted(handler)
    server = await asyncio.start_server(script.serve, "127.0.0.1", 0)
    script.port = server.sockets[0].getsockname()[1]
    upstream = Upstream(f"http://127.0.0.1:{script.port}/v1", connect_timeout_s=2, headers={"authorization": "x"})
    try:
        yield script, upstream
    finally:
        await upstream.aclose()
        server.close()
        await server.wait_closed()


def later(seconds: float) -> float:
    return asyncio.get_running_loop().time() + seconds


async def body_of(upstream: Upstream, deadline_s: float = 5.0) -> tuple[int, list[str]]:
    response = await upstream.post("/chat/completions", b'{"q": 1}', later(deadline_s))
    try:
        return response.status, [line async for line in response.lines()]
    finally:
        await response.aclose()


def answering(*responses: bytes, close_after: bool = False) -> Handler:
    """Answer each request on a connection with the next response; optionally close after each."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        for response in responses:
            await read_request(reader)
            writer.write(response)
            await writer.drain()
            if close_after:
                return
        await reader.read()  # keep the connection until the client leaves

    return handler


@pytest.mark.parametrize(
    "response",
    [
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(b'data: {"a"', b": 1}\n\ndata: [DONE]\n\n"),
        b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(SSE), SSE),
        b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + SSE,
    ],
    ids=["chunked", "content-length", "until-close"],
)
async def test_fault_body_framings_yield_the_same_lines(response: bytes) -> None:
    async with scripted(answering(response, close_after=True)) as (script, upstream):
        status, lines = await body_of(upstream)
    assert status == 200 and lines == ['data: {"a": 1}', "", "data: [DONE]", ""]
    assert script.connections == 1


async def test_fault_the_request_line_headers_and_body_are_sent() -> None:
    seen: list[tuple[bytes, bytes]] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        seen.append(await read_request(reader))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        await reader.read()

    async with scripted(handler) as (script, upstream):
        await body_of(upstream)
    head, body = seen[0]
    lines = head.decode().split("\r\n")
    assert lines[0] == "POST /v1/chat/completions HTTP/1.1"
    assert f"host: 127.0.0.1:{script.port}" in lines and "authorization: x" in lines
    assert "content-type: application/json" in lines and body == b'{"q": 1}'


async def test_fault_a_finished_connection_is_kept_alive_and_reused() -> None:
    ok = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(SSE)
    async with scripted(answering(ok, ok, ok)) as (script, upstream):
        for _ in range(3):
            assert (await body_of(upstream))[0] == 200
    assert script.connections == 1


async def test_fault_an_unfinished_answer_closes_its_connection() -> None:
    ok = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(SSE, SSE)
    async with scripted(answering(ok, ok)) as (script, upstream):
        response = await upstream.post("/chat/completions", b"{}", later(5))
        async for _ in response.lines():
            break
        await response.aclose()
        assert (await body_of(upstream))[0] == 200
    assert script.connections == 2


async def test_fault_a_kept_alive_connection_the_server_closed_is_replaced() -> None:
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(SSE), SSE)
    async with scripted(answering(ok, close_after=True)) as (script, upstream):
        assert (await body_of(upstream))[0] == 200
        await asyncio.sleep(0.05)  # the server's close arrives: found before reuse
        assert (await body_of(upstream))[0] == 200
    assert script.connections == 2


async def test_fault_a_connection_closed_before_any_answer_byte_is_retried_once_on_a_fresh_one() -> None:
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(SSE), SSE)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, number: int) -> None:
        await read_request(reader)
        writer.write(ok)
        await writer.drain()
        if number == 1:  # the first connection: read the second request, then drop it unanswered
            await read_request(reader)
            return
        await reader.read()

    async with scripted(handler) as (script, upstream):
        assert (await body_of(upstream))[0] == 200
        assert (await body_of(upstream))[0] == 200
    assert script.connections == 2


async def test_fault_a_fresh_connection_closed_before_any_answer_is_not_retried() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await read_request(reader)

    async with scripted(handler) as (script, upstream):
        with pytest.raises(ConnectionBroken) as caught:
            await body_of(upstream)
    assert script.connections == 1 and not caught.value.answered


async def test_fault_a_cut_chunked_stream_is_broken_after_the_answer_began() -> None:
    cut = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"%x\r\n%s\r\n" % (len(SSE), SSE)
    async with scripted(answering(cut, close_after=True)) as (_, upstream):
        response = await upstream.post("/chat/completions", b"{}", later(5))
        lines = []
        with pytest.raises(ConnectionBroken) as caught:
            async for line in response.lines():
                lines.append(line)
        await response.aclose()
    assert caught.value.answered and lines[0] == 'data: {"a": 1}'


async def test_fault_garbage_instead_of_http_is_broken() -> None:
    async with scripted(answering(b"SSH-2.0-OpenSSH\r\n\r\n", close_after=True)) as (_, upstream):
        with pytest.raises(ConnectionBroken, match="not an HTTP answer"):
            await body_of(upstream)


async def test_fault_a_hanging_server_hits_the_deadline() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await read_request(reader)
        await reader.read()

    async with scripted(handler) as (_, upstream):
        started = time.perf_counter()
        with pytest.raises(CallTimeout):
            await body_of(upstream, deadline_s=0.3)
    assert 0.25 < time.perf_counter() - started < 2


async def test_fault_a_stream_that_stalls_midway_hits_the_deadline() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"%x\r\n%s\r\n" % (len(SSE), SSE))
        await reader.read()

    async with scripted(handler) as (_, upstream):
        response = await upstream.post("/chat/completions", b"{}", later(0.3))
        with pytest.raises(CallTimeout):
            async for _ in response.lines():
                pass
        await response.aclose()


async def test_fault_nothing_listening_is_a_connect_failure() -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    upstream = Upstream(f"http://127.0.0.1:{port}/v1", connect_timeout_s=2, headers={})
    with pytest.raises(ConnectFailed) as caught:
        await upstream.post("/chat/completions", b"{}", later(5))
    assert caught.value.kind == "ConnectError"


def test_only_http_urls() -> None:
    with pytest.raises(ValueError, match="not an http"):
        Upstream("unix:///tmp/engine.sock", connect_timeout_s=1, headers={})
