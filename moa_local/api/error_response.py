"""The one place where errors become HTTP: status, headers and the OpenAI envelope."""

from __future__ import annotations

import json
from typing import Any

from moa_local.errors import Overloaded, RequestFailed


def envelope(exc: RequestFailed) -> dict[str, Any]:
    return {"error": {"message": exc.message, "type": exc.kind, "param": exc.param, "code": exc.code}}


def error_parts(exc: RequestFailed) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """Status, headers and body of the JSON error response for `exc`."""
    body = json.dumps(envelope(exc)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if isinstance(exc, Overloaded):
        headers.append((b"retry-after", str(exc.retry_after_s).encode()))
    if exc.status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    return exc.status, headers, body


def internal_error() -> RequestFailed:
    """What a caller sees of a bug: no traceback, a pointer to the server log."""
    return RequestFailed("internal error in moa-local; see the gateway log")
