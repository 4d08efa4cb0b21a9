"""The OpenAI-compatible HTTP gateway: every mixture and endpoint is a model.

`create_app(config)` builds the ASGI app; nothing happens at import. The
endpoint pool, the pipeline and the health prober are opened in the app's
lifespan and closed there. Routes: `POST /v1/chat/completions`,
`GET /v1/models`, `GET /health`, `GET /ready`, `GET /metrics`. Errors leave
only through `gateway_errors.py`, in the OpenAI envelope.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import re
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from moa_local.api.chat_response import ChatResponse
from moa_local.api.error_response import envelope, error_parts, internal_error
from moa_local.api.protocol import parse_chat_request
from moa_local.config import Config
from moa_local.engines.pool import EndpointPool
from moa_local.engines.prober import Prober
from moa_local.errors import AuthError, InvalidRequest, ModelNotFound, Overloaded, PayloadTooLarge, RequestFailed
from moa_local.metrics import Metrics
from moa_local.mixture.catalog import UNKNOWN, model_kind, model_label, not_found_message, run_spec
from moa_local.mixture.pipeline import Pipeline

logger = logging.getLogger("moa_local.gateway")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
OPEN_PATHS = ("/health",)


class Gateway:
    """Everything one app instance owns; built per app, never global."""

    def __init__(self, config: Config, metrics: Metrics) -> None:
        self.config = config
        self.metrics = metrics
        self.keys = [key.strip() for key in os.environ.get(config.gateway.api_keys_env or "", "").split(",")]
        self.keys = [key for key in self.keys if key]
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
                _log(request_id, "unknown", 499, "cancelled", 0.0, None, "the client left while sending the body")
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
            _log(request_id, model, exc.status, "rejected", 0.0, None,
                 f"{exc.kind} ({exc.param or 'body'})" if quoted else exc.message)  # fmt: skip
            status, headers, body = error_parts(exc)
            return Response(body, status, headers={k.decode(): v.decode() for k, v in headers})
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
            status, headers, body = error_parts(ModelNotFound(not_found_message(self.config, name), param="model"))
            return Response(body, status, headers={k.decode(): v.decode() for k, v in headers})
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
        gateway, response = self.gateway, self.response
        gateway.inflight += 1
        gateway.metrics.gateway_inflight.inc()
        start = time.perf_counter()
        try:
            await response(scope, receive, send)
        finally:
            gateway.inflight -= 1
            gateway.metrics.gateway_inflight.dec()
            result = response.result
            usage = result.trace.usage().as_openai() if result.trace else None
            content = _content(response) if gateway.config.gateway.log_content else None
            _log(response.request_id, response.request.model, result.status, result.outcome,
                 time.perf_counter() - start, usage, result.error, content)  # fmt: skip


class _Auth:
    """Bearer-key check on every route but /health (constant-time comparison)."""

    def __init__(self, app: ASGIApp, gateway: Gateway) -> None:
        self.app = app
        self.gateway = gateway

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.gateway.keys or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        header = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
        token = header[7:].strip() if header[:7].lower() == "bearer " else ""
        matches = [hmac.compare_digest(token.encode(), key.encode()) for key in self.gateway.keys]
        if token and any(matches):
            await self.app(scope, receive, send)
            return
        message = "missing API key: send 'Authorization: Bearer <key>'" if not header else "invalid API key"
        status, headers, body = error_parts(AuthError(message))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def create_app(config: Config, metrics: Metrics | None = None, *, probe: bool = True) -> Starlette:
    gateway = Gateway(config, metrics if metrics is not None else Metrics())
    gateway.metrics.preset(config)  # every configured series exists at zero from the start

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with EndpointPool(config.endpoints, gateway.metrics) as pool:
            gateway.pool = pool
            gateway.pipeline = Pipeline(pool, gateway.metrics)
            gateway.prober = Prober(config, pool, gateway.metrics)
            task = asyncio.create_task(gateway.prober.run(config.gateway.probe_interval_s)) if probe else None
            try:
                yield
            finally:
                if task is not None:
                    task.cancel()
                    with suppress(asyncio.CancelledError):
                        await task

    routes = [
        Route("/v1/chat/completions", gateway.chat, methods=["POST"]),
        Route("/v1/models", gateway.models, methods=["GET"]),
        Route("/v1/models/{model:path}", gateway.model, methods=["GET"]),
        Route("/health", gateway.health, methods=["GET"]),
        Route("/ready", gateway.ready, methods=["GET"]),
        Route("/metrics", gateway.metrics_text, methods=["GET"]),
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={HTTPException: _http_error, Exception: _internal_error},
    )
    app.add_middleware(_Auth, gateway=gateway)
    app.state.gateway = gateway
    return app


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


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    kind = "not_found" if exc.status_code == 404 else "method_not_allowed" if exc.status_code == 405 else None
    message = f"no route {request.method} {request.url.path}" if kind else str(exc.detail)
    error = RequestFailed(message)
    error.status, error.kind, error.code = exc.status_code, "invalid_request_error", kind
    return JSONResponse(envelope(error), status_code=exc.status_code)


async def _internal_error(request: Request, exc: Exception) -> Response:
    logger.exception("internal error on %s %s", request.method, request.url.path)
    return JSONResponse(envelope(internal_error()), status_code=500)


def _log(
    request_id: str, model: str, status: int, outcome: str, latency_s: float,
    usage: dict[str, int] | None, error: str | None, content: dict[str, str] | None = None,
) -> None:  # fmt: skip
    record: dict[str, Any] = {"request_id": request_id, "model": model, "status": status, "outcome": outcome,
                              "latency_ms": round(latency_s * 1000, 1)}  # fmt: skip
    if usage:
        record.update(prompt_tokens=usage["prompt_tokens"], completion_tokens=usage["completion_tokens"])
    if error:
        record["error"] = error
    if content:  # only with gateway.log_content (debug)
        record.update(content)
    logger.info(json.dumps(record))


def _content(response: ChatResponse) -> dict[str, str]:
    """The text of a request for the log line: its last user message and the answer."""
    users = [message["content"] for message in response.request.conversation() if message["role"] == "user"]
    return {"prompt": users[-1] if users else "", "answer": response.result.answer or ""}
