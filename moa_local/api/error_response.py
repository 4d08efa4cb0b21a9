"""The one place where errors become HTTP: status, headers and the OpenAI envelope.

Every error the gateway answers with is built here, from a `RequestFailed`:
as a starlette `Response` (routes and exception handlers), sent straight over
ASGI (the auth middleware, a chat response before its first token), or as an
SSE error event (a stream already under way, too late for a status).
Starlette's own HTTPExceptions (no such route, wrong method) become a
`RequestFailed` first, so they share the envelope. Every error response
carries the request's id (`x-request-id`) when the caller passes it, so a
failed request can be matched to its log line. Which error a request gets
is left to whoever raises it; logging is left to the callers.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.types import Send

from moa_local.errors import Overloaded, RequestFailed


def envelope(exc: RequestFailed) -> dict[str, Any]:
    return {"error": {"message": exc.message, "type": exc.kind, "param": exc.param, "code": exc.code}}


def error_response(exc: RequestFailed, request_id: str | None = None) -> Response:
    status, headers, body = _parts(exc, request_id)
    return Response(body, status, headers={name.decode(): value.decode() for name, value in headers})


async def send_error(send: Send, exc: RequestFailed, request_id: str | None = None, *, close: bool = False) -> None:
    """Answer with `exc` on a raw ASGI `send` whose response has not started.

    `close` asks the server to close the connection after it: for a request
    whose body was left unread (too large, too slow), so it is not parsed
    as the next request.
    """
    status, headers, body = _parts(exc, request_id)
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def error_event(exc: RequestFailed) -> bytes:
    """`exc` as one server-sent event, for a stream whose 200 has already gone out."""
    return f"data: {json.dumps(envelope(exc))}\n\n".encode()


def route_error(exc: HTTPException, method: str, path: str) -> RequestFailed:
    """Starlette's HTTPException (404 no route, 405 wrong method, ...) as one of ours."""
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
    error = RequestFailed(f"no route {method} {path}" if code else str(exc.detail))
    error.status, error.kind, error.code = exc.status_code, "invalid_request_error", code
    return error


def body_timeout(timeout_s: float) -> RequestFailed:
    """408: the request body did not arrive within `timeout_s` of the request's start."""
    error = RequestFailed(f"the request body did not arrive within {timeout_s:g}s")
    error.status, error.kind, error.code = 408, "invalid_request_error", "request_timeout"
    return error


def internal_error() -> RequestFailed:
    """What a caller sees of a bug: no traceback, a pointer to the server log."""
    return RequestFailed("internal error in moa-local; see the gateway log")


def _parts(exc: RequestFailed, request_id: str | None) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """Status, headers and body of the JSON error response for `exc`."""
    body = json.dumps(envelope(exc)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if request_id is not None:
        headers.append((b"x-request-id", request_id.encode()))
    if isinstance(exc, Overloaded):
        headers.append((b"retry-after", str(exc.retry_after_s).encode()))
    if exc.status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    return exc.status, headers, body
