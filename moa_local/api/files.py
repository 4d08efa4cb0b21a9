"""The `/v1/files` routes, in OpenAI's shapes: upload, list, retrieve, content, delete.

Uploads take `purpose=batch` only (the input of `/v1/batches`), are
streamed to disk under `gateway.max_upload_bytes` (`upload.py`) and checked
as a batch input (JSONL, not empty) before they are kept; a batch's output
and error files appear here with purpose `batch_output`. With API keys
configured, an object exists only for the key that created it: `owner_of`
keeps a hash of the key, never the key. Also shared with `batches.py`: the
handler wrapper that answers a `RequestFailed` with its envelope, and the
list parameters. Left out: batches (`batches.py`), SQL (`jobs/store.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response

from moa_local.api.error_response import error_response
from moa_local.api.request_id import request_id
from moa_local.api.upload import receive_upload
from moa_local.config import GatewayConfig
from moa_local.errors import BatchInputError, InvalidRequest, NotFound, RequestFailed
from moa_local.jobs.format import check_input
from moa_local.jobs.records import StoredFile, new_id
from moa_local.jobs.service import BatchService
from moa_local.jobs.store import Store, StoreError

Handler = Callable[[Any, Request], Awaitable[Response]]


def answers(handler: Handler) -> Handler:
    """A route handler whose `RequestFailed` becomes its OpenAI error response."""

    @functools.wraps(handler)
    async def run(self: Any, request: Request) -> Response:
        try:
            return await handler(self, request)
        except RequestFailed as exc:
            return error_response(exc, request_id(request.scope))
        except StoreError as exc:
            return error_response(RequestFailed(f"batch storage unavailable: {exc}"), request_id(request.scope))

    return run


def owner_of(request: Request, keyed: bool) -> str:
    """Who owns what this request creates or sees: a hash of its API key, or "" when the gateway has none."""
    if not keyed:
        return ""
    header = request.headers.get("authorization", "")
    token = header[7:].strip() if header[:7].lower() == "bearer " else ""
    return hashlib.sha256(token.encode()).hexdigest()


def page_params(request: Request, max_limit: int, default: int) -> tuple[str | None, int]:
    """`after` and `limit` of a list request, the limit checked against 1..max_limit."""
    raw = request.query_params.get("limit")
    try:
        limit = default if raw is None else int(raw)
    except ValueError:
        limit = 0
    if not 1 <= limit <= max_limit:
        raise InvalidRequest(f"'limit' must be an integer from 1 to {max_limit} (got {raw!r})", param="limit")
    return request.query_params.get("after") or None, limit


def listing(data: list[dict[str, Any]], has_more: bool) -> JSONResponse:
    first, last = (data[0]["id"], data[-1]["id"]) if data else (None, None)
    return JSONResponse({"object": "list", "data": data, "first_id": first, "last_id": last, "has_more": has_more})


def file_object(stored: StoredFile) -> dict[str, Any]:
    return {
        "id": stored.id, "object": "file", "bytes": stored.bytes, "created_at": stored.created_at,
        "filename": stored.filename, "purpose": stored.purpose, "status": "processed", "expires_at": None,
        "status_details": None,
    }  # fmt: skip


class Files:
    def __init__(self, service: BatchService, config: GatewayConfig, *, keyed: bool) -> None:
        self.service = service
        self.config = config
        self.keyed = keyed

    def _store(self) -> Store:
        return self.service.open()[0]

    def _find(self, request: Request) -> StoredFile:
        file_id = request.path_params["file_id"]
        found = self._store().file(file_id, owner_of(request, self.keyed))
        if found is None:
            raise NotFound(f"no such file: '{file_id}'", param="file_id")
        return found

    @answers
    async def create(self, request: Request) -> Response:
        store = self._store()
        file_id = new_id("file-")
        staged = store.staging(file_id)
        upload = await receive_upload(request, staged, self.config.max_upload_bytes)
        try:
            purpose = upload.fields.get("purpose")
            if purpose is None:
                raise InvalidRequest("'purpose' is required (send purpose=batch)", param="purpose")
            if purpose != "batch":
                raise InvalidRequest(f"'purpose' must be 'batch': moa-local keeps batch inputs only (got {purpose!r})",
                                     param="purpose")  # fmt: skip
            if upload.filename is None:
                raise InvalidRequest("'file' is required: send the JSONL file as a part named 'file'", param="file")
            try:
                await asyncio.to_thread(check_input, staged)
            except BatchInputError as exc:
                raise InvalidRequest(str(exc).replace(str(staged), upload.filename), param="file") from None
        except BaseException:
            with contextlib.suppress(OSError):
                staged.unlink()
            raise
        stored = store.add_file(file_id, owner_of(request, self.keyed), purpose, upload.filename, int(time.time()))
        return JSONResponse(file_object(stored))

    @answers
    async def list(self, request: Request) -> Response:
        after, limit = page_params(request, 10_000, 10_000)
        order = request.query_params.get("order", "desc")
        if order not in ("asc", "desc"):
            raise InvalidRequest(f"'order' must be 'asc' or 'desc' (got {order!r})", param="order")
        purpose = request.query_params.get("purpose") or None
        found, more = self._store().files(
            owner_of(request, self.keyed), purpose=purpose, after=after, limit=limit, newest_first=order == "desc"
        )
        return listing([file_object(stored) for stored in found], more)

    @answers
    async def retrieve(self, request: Request) -> Response:
        return JSONResponse(file_object(self._find(request)))

    @answers
    async def content(self, request: Request) -> Response:
        stored = self._find(request)
        return FileResponse(self._store().path(stored.id), media_type="application/octet-stream")

    @answers
    async def delete(self, request: Request) -> Response:
        stored = self._find(request)
        store = self._store()
        reader = store.batch_reading(stored.id)
        if reader is not None:
            raise InvalidRequest(f"file '{stored.id}' is the input of batch '{reader}', which has not finished; "
                                 "cancel the batch first", param="file_id")  # fmt: skip
        store.delete_file(stored.id, stored.owner)
        return JSONResponse({"id": stored.id, "object": "file", "deleted": True})
