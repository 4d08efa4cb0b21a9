"""A lean HTTP/1.1 client for the engines' streamed chat completions.

The gateway's throughput on fast engines is bounded by its own CPU, and a
general-purpose client spent most of it: under load at concurrency 32 the
httpx stack (transport, connection pool, expiry checks, anyio streams, h11)
took 65% of the gateway's samples, five times our own code (see
docs/benchmarks.md). An engine call needs little of that generality: one
POST to a fixed URL, a JSON body, a streamed answer. `Upstream` sends it
over asyncio streams with kept-alive connections, reads the status and
headers, and yields the body's lines, decoding chunked transfer encoding,
a Content-Length or a body that ends with the connection.

The caller's deadline is one timer per call that aborts the connection
when it fires, rather than a timeout around every read (the reads then
fail and `CallTimeout` is raised). A kept-alive connection the engine has
closed in the meantime is found before use, or by a failure before any
byte of the answer, and the request is then sent once more on a fresh one
(the engine never saw it). Only plain `http` and `https` without proxies:
engines are addressed directly.

Left out on purpose: HTTP/2, compression (none is asked for), redirects,
cookies and proxies.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections import deque
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

READ_LIMIT = 1 << 20  # the longest line or header block accepted
DRAIN_ABOVE = 1 << 16  # wait for the socket when this much is still unsent


class UpstreamError(Exception):
    """A call failed below HTTP: `answered` says whether any byte of the answer arrived."""

    answered = False


class ConnectFailed(UpstreamError):
    """No connection to the engine (refused, unreachable, or not within the connect timeout)."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind


class ConnectionBroken(UpstreamError):
    """The connection closed or sent something that is not HTTP before the answer was complete."""

    def __init__(self, kind: str, answered: bool) -> None:
        super().__init__(kind)
        self.kind = kind
        self.answered = answered


class CallTimeout(UpstreamError):
    """The call's deadline passed."""


class _Connection:
    __slots__ = ("reader", "reused", "timed_out", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.timed_out = False
        self.reused = False

    @property
    def usable(self) -> bool:
        return not self.writer.is_closing() and not self.reader.at_eof()

    def expire(self) -> None:
        self.timed_out = True
        self.writer.transport.abort()

    async def close(self) -> None:
        """Drop the connection at once (an unfinished answer must stop at the engine too)."""
        self.writer.transport.abort()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()


class Response:
    """Status, headers (lower-case names) and the body, read once with `lines()` or `read()`."""

    def __init__(
        self, upstream: Upstream, connection: _Connection, timer: asyncio.TimerHandle, status: int,
        headers: dict[str, str],
    ) -> None:  # fmt: skip
        self.status = status
        self.headers = headers
        self._upstream = upstream
        self._connection: _Connection | None = connection
        self._timer = timer
        self._complete = False
        self._keep = headers.get("connection", "").lower() != "close"

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body's bytes as they arrive."""
        connection = self._connection
        if connection is None:
            return
        reader = connection.reader
        try:
            if "chunked" in self.headers.get("transfer-encoding", "").lower():
                while True:
                    size_line = await reader.readuntil(b"\r\n")
                    size = int(size_line.split(b";", 1)[0], 16)
                    if size == 0:
                        while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers, then the blank line
                            pass
                        break
                    data = await reader.readexactly(size + 2)
                    yield data[:-2]
            elif "content-length" in self.headers:
                left = int(self.headers["content-length"])
                while left > 0:
                    data = await reader.read(min(left, 1 << 16))
                    if not data:
                        raise asyncio.IncompleteReadError(b"", left)
                    left -= len(data)
                    yield data
            else:  # the body ends with the connection
                self._keep = False
                while data := await reader.read(1 << 16):
                    yield data
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
            if connection.timed_out:
                raise CallTimeout() from None
            raise ConnectionBroken(_kind(exc), answered=True) from None
        self._complete = True

    async def lines(self) -> AsyncIterator[str]:
        """The body's lines (UTF-8, without line endings) as they arrive."""
        pending = b""
        async for data in self.chunks():
            pending += data
            if b"\n" not in data:
                continue
            *complete, pending = pending.split(b"\n")
            for line in complete:
                yield line.rstrip(b"\r").decode("utf-8", "replace")
        if pending:
            yield pending.rstrip(b"\r").decode("utf-8", "replace")

    async def read(self) -> bytes:
        return b"".join([data async for data in self.chunks()])

    async def aclose(self) -> None:
        """Return the connection for reuse if the answer was read to its end, else close it."""
        self._timer.cancel()
        connection, self._connection = self._connection, None
        if connection is None:
            return
        if self._complete and self._keep and not connection.timed_out:
            await self._upstream.give_back(connection)
        else:
            await connection.close()


class Upstream:
    """POSTs to one engine's base URL over a pool of kept-alive connections."""

    def __init__(self, base_url: str, *, connect_timeout_s: float, headers: dict[str, str]) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url}")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.ssl: ssl.SSLContext | None = ssl.create_default_context() if parts.scheme == "https" else None
        self.base_path = parts.path.rstrip("/")
        self.connect_timeout_s = connect_timeout_s
        host = parts.netloc.rsplit("@", 1)[-1]
        self._head = "".join(f"{name}: {value}\r\n" for name, value in {"host": host, **headers}.items())
        self._idle: deque[_Connection] = deque()

    async def post(self, path: str, body: bytes, deadline: float) -> Response:
        """Send `body` (JSON) to base path + `path`; `deadline` is on the event loop's clock.

        The response's headers have arrived; read its body, then `aclose()` it.
        """
        loop = asyncio.get_running_loop()
        request = (
            f"POST {self.base_path}{path} HTTP/1.1\r\n{self._head}content-type: application/json\r\n"
            f"accept: text/event-stream\r\ncontent-length: {len(body)}\r\n\r\n"
        ).encode("latin-1") + body
        while True:
            connection = await self._connection(deadline)
            timer = loop.call_at(deadline, connection.expire)
            try:
                status, headers = await self._exchange(connection, request)
            except ConnectionBroken as exc:
                timer.cancel()
                await connection.close()
                if connection.reused and not exc.answered:
                    continue  # a kept-alive connection the engine had closed: the request never arrived
                raise
            except BaseException:
                timer.cancel()
                await connection.close()
                raise
            return Response(self, connection, timer, status, headers)

    async def _exchange(self, connection: _Connection, request: bytes) -> tuple[int, dict[str, str]]:
        writer, reader = connection.writer, connection.reader
        try:
            writer.write(request)
            if writer.transport.get_write_buffer_size() > DRAIN_ABOVE:
                await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            if connection.timed_out:
                raise CallTimeout() from None
            partial = isinstance(exc, asyncio.IncompleteReadError) and bool(exc.partial)
            raise ConnectionBroken(_kind(exc), answered=partial) from None
        status_line, *header_lines = head[:-4].decode("latin-1").split("\r\n")
        try:
            version, code = status_line.split(" ", 2)[:2]
            status = int(code)
        except ValueError:
            raise ConnectionBroken("not an HTTP answer", answered=True) from None
        headers: dict[str, str] = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if version == "HTTP/1.0" and headers.get("connection", "").lower() != "keep-alive":
            headers["connection"] = "close"
        return status, headers

    async def _connection(self, deadline: float) -> _Connection:
        while self._idle:
            connection = self._idle.pop()  # the most recently used: least likely to have been closed
            if connection.usable:
                connection.reused = True
                return connection
            await connection.close()
        loop = asyncio.get_running_loop()
        timeout = min(self.connect_timeout_s, deadline - loop.time())
        try:
            async with asyncio.timeout(max(0.0, timeout)):
                reader, writer = await asyncio.open_connection(self.host, self.port, ssl=self.ssl, limit=READ_LIMIT)
        except TimeoutError:
            if timeout < self.connect_timeout_s:
                raise CallTimeout() from None
            raise ConnectFailed("ConnectTimeout", f"no connection within {self.connect_timeout_s:g}s") from None
        except OSError as exc:
            raise ConnectFailed("ConnectError", str(exc) or type(exc).__name__) from None
        return _Connection(reader, writer)

    async def give_back(self, connection: _Connection) -> None:
        if connection.usable:
            self._idle.append(connection)
        else:
            await connection.close()

    async def aclose(self) -> None:
        while self._idle:
            await self._idle.pop().close()


def _kind(exc: BaseException) -> str:
    if isinstance(exc, asyncio.IncompleteReadError):
        return "the connection closed"
    if isinstance(exc, asyncio.LimitOverrunError):
        return "a line too long"
    if isinstance(exc, ValueError):
        return "a malformed chunk"
    return type(exc).__name__
