"""The OpenAI-compatible HTTP gateway: every mixture and endpoint is a model.

`create_app(config)` builds the ASGI app; nothing happens at import. The
endpoint pool, the pipeline and the health prober are opened in the app's
lifespan and closed there. Routes: `POST /v1/chat/completions`
(`chat_route.py`), `GET /v1/models`, `GET /health`, `GET /ready` and
`GET /metrics` (the `Gateway`, `gateway.py`), behind the bearer-key check
(`auth.py`). Errors leave only through `api/error_response.py`, in the
OpenAI envelope, with the request's id: this module maps starlette's
HTTPExceptions and any uncaught exception there.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from moa_local.api.auth import BearerAuth, api_keys
from moa_local.api.batches import Batches
from moa_local.api.chat_route import ChatRoute
from moa_local.api.completion import complete
from moa_local.api.error_response import error_response, internal_error, route_error
from moa_local.api.files import Files
from moa_local.api.gateway import Gateway
from moa_local.api.request_id import request_id
from moa_local.config import Config
from moa_local.engines.pool import EndpointPool
from moa_local.engines.prober import Prober
from moa_local.jobs.service import BatchService
from moa_local.metrics import Metrics
from moa_local.mixture.pipeline import Pipeline

logger = logging.getLogger("moa_local.gateway")


def create_app(config: Config, metrics: Metrics | None = None, *, probe: bool = True) -> Starlette:
    gateway = Gateway(config, metrics if metrics is not None else Metrics())
    gateway.metrics.preset(config)  # every configured series exists at zero from the start
    gateway.metrics.enable_batches()  # the gateway runs batch jobs (/v1/batches)
    keys = api_keys(config.gateway.api_keys_env)
    # Enough batch lines in flight to fill every endpoint; admission keeps them behind interactive calls.
    lines = sum(endpoint.max_concurrency for endpoint in config.endpoints.values())
    batches = BatchService(config.gateway.data_path(), gateway.metrics, max_inflight=lines)
    files_api = Files(batches, config.gateway, keyed=bool(keys))
    batches_api = Batches(batches, config.gateway, keyed=bool(keys))

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with EndpointPool(config.endpoints, gateway.metrics, batch_share=config.gateway.batch_share) as pool:
            gateway.pool = pool
            pipeline = gateway.pipeline = Pipeline(pool, gateway.metrics)
            gateway.prober = Prober(config, pool, gateway.metrics)
            task = asyncio.create_task(gateway.prober.run(config.gateway.probe_interval_s)) if probe else None
            if task is not None:
                task.add_done_callback(_prober_stopped)

            async def execute(body: dict[str, Any], request_id: str) -> tuple[int, dict[str, Any]]:
                return await complete(config, pipeline, body, request_id, priority="batch")

            try:
                await batches.start(execute)
                yield
            finally:
                await batches.stop()
                if task is not None:
                    task.cancel()
                    with suppress(asyncio.CancelledError):
                        await task

    routes = [
        Route("/v1/chat/completions", ChatRoute(gateway), methods=["POST"]),
        Route("/v1/models", gateway.models, methods=["GET"]),
        Route("/v1/models/{model:path}", gateway.model, methods=["GET"]),
        Route("/health", gateway.health, methods=["GET"]),
        Route("/ready", gateway.ready, methods=["GET"]),
        Route("/metrics", gateway.metrics_text, methods=["GET"]),
        Route("/v1/files", files_api.create, methods=["POST"]),
        Route("/v1/files", files_api.list, methods=["GET"]),
        Route("/v1/files/{file_id}", files_api.retrieve, methods=["GET"]),
        Route("/v1/files/{file_id}", files_api.delete, methods=["DELETE"]),
        Route("/v1/files/{file_id}/content", files_api.content, methods=["GET"]),
        Route("/v1/batches", batches_api.create, methods=["POST"]),
        Route("/v1/batches", batches_api.list, methods=["GET"]),
        Route("/v1/batches/{batch_id}", batches_api.retrieve, methods=["GET"]),
        Route("/v1/batches/{batch_id}/cancel", batches_api.cancel, methods=["POST"]),
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={HTTPException: _http_error, Exception: _internal_error},
    )
    app.add_middleware(BearerAuth, keys=keys)
    app.state.gateway = gateway
    return app


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return error_response(route_error(exc, request.method, request.url.path), request_id(request.scope))


async def _internal_error(request: Request, exc: Exception) -> Response:
    rid = request_id(request.scope)
    logger.exception("internal error on %s %s (request %s)", request.method, request.url.path, rid)
    return error_response(internal_error(), rid)


def _prober_stopped(task: asyncio.Task[None]) -> None:
    """The prober ends only when cancelled; anything else is logged, never silent."""
    if not task.cancelled() and task.exception() is not None:
        logger.error(
            "the health prober stopped: /ready and moa_endpoint_up no longer change", exc_info=task.exception()
        )
