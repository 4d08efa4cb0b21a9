"""The Gateway: what one app instance owns, and its small route handlers.

It holds the config, the metrics, the in-flight count requests are admitted
against, the time a request body may take, and the pool, pipeline and
prober that `create_app`'s lifespan opens. Its handlers answer
`/v1/models[/{model}]`, `/health`, `/ready` and `/metrics`; the chat route
is `chat_route.py`'s. Error bodies come from `error_response.py`; routing,
middleware and the lifespan are `app.py`'s.
"""

from __future__ import annotations

import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from moa_local.api.error_response import error_response
from moa_local.api.request_id import request_id
from moa_local.config import Config
from moa_local.engines.pool import EndpointPool
from moa_local.engines.prober import Prober
from moa_local.errors import ModelNotFound
from moa_local.metrics import Metrics
from moa_local.mixture.catalog import model_kind, not_found_message
from moa_local.mixture.pipeline import Pipeline


class Gateway:
    """Everything one app instance owns; built per app, never global."""

    def __init__(self, config: Config, metrics: Metrics) -> None:
        self.config = config
        self.metrics = metrics
        self.inflight = 0
        self.body_timeout_s = config.gateway.body_timeout_s
        self.pool: EndpointPool | None = None
        self.pipeline: Pipeline | None = None
        self.prober: Prober | None = None
        self.created = int(time.time())

    async def models(self, request: Request) -> Response:
        data = [self._model(name, "mixture") for name in self.config.mixtures]
        data += [self._model(name, "endpoint") for name in self.config.endpoints]
        return JSONResponse({"object": "list", "data": data})

    async def model(self, request: Request) -> Response:
        name = request.path_params["model"]
        kind = model_kind(self.config, name)
        if kind is None:
            error = ModelNotFound(not_found_message(self.config, name), param="model")
            return error_response(error, request_id(request.scope))
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
