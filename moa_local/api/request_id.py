"""The request id: the client's `X-Request-Id` when it is sane, else a fresh one.

It is made once per request and kept in the ASGI scope's state, so the
chat route's log line, its success headers and every error response (from
the auth check, a route, or the 404/405/500 handlers) carry the same id
whichever layer answers. Putting it on the responses is left to their
builders (`error_response.py`, `chat_response.py`).
"""

from __future__ import annotations

import re
import uuid

from starlette.types import Scope

_SANE = re.compile(rb"[A-Za-z0-9._-]{1,64}")
_KEY = "moa_request_id"


def request_id(scope: Scope) -> str:
    """The id of the request `scope` belongs to (the same on every call)."""
    state = scope.setdefault("state", {})
    found: str | None = state.get(_KEY)
    if found is None:
        given = next((value for name, value in scope.get("headers", ()) if name == b"x-request-id"), b"")
        found = given.decode("ascii") if _SANE.fullmatch(given) else uuid.uuid4().hex
        state[_KEY] = found
    return found
