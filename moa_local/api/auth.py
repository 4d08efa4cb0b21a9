"""The gateway's bearer-key check, as ASGI middleware in front of every route.

Keys come from the environment variable that `gateway.api_keys_env` names (a
comma-separated list); with none set, every request passes. `/health` is
always open. Comparison is constant-time. The 401 itself is built in
`error_response.py`; the keys' source and rotation are left to the operator.
"""

from __future__ import annotations

import hmac
import os

from starlette.types import ASGIApp, Receive, Scope, Send

from moa_local.api.error_response import send_error
from moa_local.api.request_id import request_id
from moa_local.errors import AuthError

OPEN_PATHS = ("/health",)


def api_keys(env_name: str | None) -> list[str]:
    """The keys listed in `env_name` (comma-separated, blanks dropped); none without one."""
    keys = [key.strip() for key in os.environ.get(env_name or "", "").split(",")]
    return [key for key in keys if key]


class BearerAuth:
    """Bearer-key check on every route but /health (constant-time comparison)."""

    def __init__(self, app: ASGIApp, keys: list[str]) -> None:
        self.app = app
        self.keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.keys or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        header = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
        token = header[7:].strip() if header[:7].lower() == "bearer " else ""
        matches = [hmac.compare_digest(token.encode(), key.encode()) for key in self.keys]
        if token and any(matches):
            await self.app(scope, receive, send)
            return
        message = "missing API key: send 'Authorization: Bearer <key>'" if not header else "invalid API key"
        await send_error(send, AuthError(message), request_id(scope))
