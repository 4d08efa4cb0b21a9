"""The Gateway: what one app instance owns, and its route handlers.

It holds the config, the metrics, the in-flight count it admits requests
against, and the pool, pipeline and prober that `create_app`'s lifespan
opens. Its handlers answer `/v1/chat/completions` (a `ChatResponse` run and
counted by `_Tracked`), `/v1/models[/{model}]`, `/health`, `/ready` and
`/metrics`. Error bodies come from `error_response.py`, log lines from
`request_log.py`; routing, middleware and the lifespan are `app.py`'s.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from typing import Any

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from moa_local.api.chat_response import ChatResponse
from moa_local.api.error_response import error_response
from moa_local.api.protocol import parse_chat_request
from moa_local.api.request_log import log_chat, log_request
from moa_local.config import Config
from moa_local.engines.pool import EndpointPool
from moa_local.engines.prober import Prober
from moa_local.errors import InvalidRequest, ModelNotFound, Overloaded, PayloadTooLarge, RequestFailed
from moa_local.metrics import Metrics
from moa_local.mixture.catalog import UNKNOWN, model_kind, model_label, not_found_message, run_spec
from moa_local.mixture.pipeline import Pipeline

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class Gateway:
    """Everything one app instance owns; built per app, never global."""

    def __init__(self, config: Config, metrics: Metrics) -> None:
        self.config = config
        self.metrics = metrics
        self.inflight = 0
        self.pool: EndpointPool | None = None
        self.pipeline: Pipeline | None = None
        self.prober: Prober | None = None
        self.created = int(time.time())

    async def chat(self, request: Request) -> Any:
        request_id = _request_id(request)
        body = b""
        try:
            try:
                body = await _read_body(request, self.config.gateway.max_body_bytes)
            except ClientDisconnect:  # gone while sending the body: nothing to answer, no error of ours
                self.metrics.requests.labels("unknown", "cancelled").inc()
                gone = "the client left while sending the body"
                log_request(request_id, "unknown", 499, "cancelled", 0.0, None, gone)
                return Response(status_code=400)
            # No await from this check to _Tracked counting the request: check and count are one step.
            if self.inflight >= self.config.gateway.max_inflight:
                raise Overloaded(f"more than {self.config.gateway.max_inflight} requests in flight; retry shortly")
            chat = parse_chat_request(body, self.config.gateway.max_body_bytes)
            spec = run_spec(self.config, chat.model, chat.overrides())
        except RequestFailed as exc:
            model = self._model_label(body)
            self.metrics.requests.labels(model, "rejected").inc()
            # A 400's message quotes the offending request value, which may be prompt text.
            quoted = isinstance(exc, InvalidRequest) and not self.config.gateway.log_content
            log_request(request_id, model, exc.status, "rejected", 0.0, None,
                        f"{exc.kind} ({exc.param or 'body'})" if quoted else exc.message)  # fmt: skip
            return error_response(exc)
        assert self.pipeline is not None, "the app's lifespan has not run"
        return _Tracked(self, ChatResponse(self.pipeline.run(spec, chat.conversation()), chat, request_id))

    def _model_label(self, body: bytes) -> str:
        """The model a rejected request named, if configured."""
        try:
            name = json.loads(body).get("model")
        except (ValueError, AttributeError, RecursionError):
            return UNKNOWN
        return model_label(self.config, name)

    async def models(self, request: Request) -> Response:
        data = [self._model(name, "mixture") for name in self.config.mixtures]
        data += [self._model(name, "endpoint") for name in self.config.endpoints]
        return JSONResponse({"object": "list", "data": data})

    async def model(self, request: Request) -> Response:
        name = request.path_params["model"]
        kind = model_kind(self.config, name)
        if kind is None:
            return error_response(ModelNotFound(not_found_message(self.config, name), param="model"))
        return JSONResponse(self._model(name, kind))

    def _model(self, name: str, kind: str) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": self.created, "owned_by": "moa-local", "moa_kind": kind}

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def ready(self, request: Request) -> Response:
        assert self.prober is not None, "the app's lifespan has not run"
        mixtures = self.prober.readiness()
        endpoints = {name: self.prober.up.get(name) for name in self.config.endpoints}
        ok = all(mixtures.values()) and (bool(mixtures) or all(endpoints.values()))
        body = {"ready": ok, "mixtures": mixtures, "endpoints": endpoints,
                "reasons": {k: v for k, v in self.prober.reasons.items() if v}}  # fmt: skip
        return JSONResponse(body, status_code=200 if ok else 503)

    async def metrics_text(self, request: Request) -> Response:
        body, content_type = self.metrics.render()
        return Response(body, headers={"content-type": content_type})


class _Tracked:
    """Runs a ChatResponse, counting it in flight and logging one line when it ends."""

    def __init__(self, gateway: Gateway, response: ChatResponse) -> None:
        self.gateway = gateway
        self.response = response

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        gateway = self.gateway
        gateway.inflight += 1
        gateway.metrics.gateway_inflight.inc()
        start = time.perf_counter()
        try:
            await self.response(scope, receive, send)
        finally:
            gateway.inflight -= 1
            gateway.metrics.gateway_inflight.dec()
            log_chat(self.response, time.perf_counter() - start, with_content=gateway.config.gateway.log_content)


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body is {declared} bytes; the limit is {limit}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body is over the {limit}-byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


def _request_id(request: Request) -> str:
    given = request.headers.get("x-request-id", "")
    return given if _REQUEST_ID.match(given) else uuid.uuid4().hex
