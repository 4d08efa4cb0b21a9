"""`POST /v1/chat/completions` as an ASGI app: admit, read, validate, answer, log.

A request counts in flight (`Gateway.inflight`, the `moa_gateway_inflight`
gauge) from its first byte, that is from the moment its headers are in,
until its answer is over: a slow upload holds a slot like any request, and
`max_inflight` bounds them all. Over that limit the request gets a 429 at
once (its body is read only briefly, to name its model in the metrics).
The body must arrive within `Gateway.body_timeout_s` of the first byte (408)
and hold at most `gateway.max_body_bytes` (413); then `protocol.py`
validates it and a `ChatResponse` answers. Every request leaves one log
line (`request_log.py`) and, if refused, one count with outcome `rejected`.
"""

from __future__ import annotations

import json
import time

from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope, Send

from moa_local.api.chat_response import ChatResponse
from moa_local.api.error_response import send_error
from moa_local.api.gateway import Gateway
from moa_local.api.protocol import parse_chat_request
from moa_local.api.request_body import read_body
from moa_local.api.request_id import request_id
from moa_local.api.request_log import log_chat, log_request
from moa_local.errors import InvalidRequest, Overloaded, RequestFailed
from moa_local.mixture.catalog import UNKNOWN, model_label, run_spec

# How long a request refused for overload is read, only to name its model in the metrics.
OVERLOADED_READ_S = 1.0


class ChatRoute:
    """The ASGI app of the chat route, bound to one gateway."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        gateway = self.gateway
        start = time.perf_counter()
        rid = request_id(scope)
        limit = gateway.config.gateway.max_inflight
        if gateway.inflight >= limit:
            overloaded = Overloaded(f"more than {limit} requests in flight; retry shortly")
            await self._refuse(scope, receive, send, rid, overloaded, start)
            return
        # No await from the check above to here: check and count are one step.
        gateway.inflight += 1
        gateway.metrics.gateway_inflight.inc()
        try:
            await self._serve(scope, receive, send, rid, start)
        finally:
            gateway.inflight -= 1
            gateway.metrics.gateway_inflight.dec()

    async def _serve(self, scope: Scope, receive: Receive, send: Send, rid: str, start: float) -> None:
        gateway = self.gateway
        max_bytes = gateway.config.gateway.max_body_bytes
        body = b""
        try:
            try:
                body = await read_body(receive, _content_length(scope), max_bytes, gateway.body_timeout_s)
            except ClientDisconnect:  # gone while sending the body: nothing to answer, no error of ours
                gateway.metrics.requests.labels(UNKNOWN, "cancelled").inc()
                gone = "the client left while sending the body"
                log_request(rid, UNKNOWN, 499, "cancelled", time.perf_counter() - start, None, gone)
                return
            chat = parse_chat_request(body, max_bytes)
            spec = run_spec(gateway.config, chat.model, chat.overrides())
        except RequestFailed as exc:
            # Read in full or not at all: a body left half-read must not be taken for the next request.
            await self._reject(send, rid, exc, self._model_label(body), start, unread=not body)
            return
        assert gateway.pipeline is not None, "the app's lifespan has not run"
        response = ChatResponse(gateway.pipeline.run(spec, chat.conversation()), chat, rid, spec.timeout_s)
        try:
            await response(scope, receive, send)
        finally:
            log_chat(response, time.perf_counter() - start, with_content=gateway.config.gateway.log_content)

    async def _refuse(
        self, scope: Scope, receive: Receive, send: Send, rid: str, exc: RequestFailed, start: float
    ) -> None:
        """Refuse a request before counting it, naming its model if its body is at hand at once."""
        try:
            body = await read_body(receive, _content_length(scope), self.gateway.config.gateway.max_body_bytes,
                                   OVERLOADED_READ_S)  # fmt: skip
        except (RequestFailed, ClientDisconnect):
            body = b""
        await self._reject(send, rid, exc, self._model_label(body), start, unread=not body)

    async def _reject(
        self, send: Send, rid: str, exc: RequestFailed, model: str, start: float, *, unread: bool
    ) -> None:
        self.gateway.metrics.requests.labels(model, "rejected").inc()
        # A 400's message quotes the offending request value, which may be prompt text.
        quoted = isinstance(exc, InvalidRequest) and not self.gateway.config.gateway.log_content
        log_request(rid, model, exc.status, "rejected", time.perf_counter() - start, None,
                    f"{exc.kind} ({exc.param or 'body'})" if quoted else exc.message)  # fmt: skip
        await send_error(send, exc, rid, close=unread)

    def _model_label(self, body: bytes) -> str:
        """The model a rejected request named, if configured."""
        try:
            name = json.loads(body).get("model")
        except (ValueError, AttributeError, RecursionError):
            return UNKNOWN
        return model_label(self.gateway.config, name)


def _content_length(scope: Scope) -> str:
    return next((value.decode("latin-1") for name, value in scope["headers"] if name == b"content-length"), "")
