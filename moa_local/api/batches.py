"""The `/v1/batches` routes, in OpenAI's shapes: create, retrieve, list, cancel.

A batch names an uploaded input file (purpose `batch`), the endpoint
`/v1/chat/completions` and the completion window `24h`; anything else is a
400 naming the field, an input file the caller cannot see a 404. Creating
one stores it `validating` and wakes the worker (`jobs/worker.py`), which
takes it from there; cancelling marks it `cancelling` and stops its lines.
With API keys configured, a batch exists only for the key that created it.
Left out: running batches (`jobs/`), files (`files.py`).
"""

from __future__ import annotations

import json
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from moa_local.api.files import answers, listing, owner_of, page_params
from moa_local.config import GatewayConfig
from moa_local.errors import InvalidRequest, NotFound, PayloadTooLarge
from moa_local.jobs.records import TIMESTAMPS, StoredBatch, new_id
from moa_local.jobs.service import BatchService

ENDPOINT = "/v1/chat/completions"
WINDOWS = {"24h": 24 * 3600}
FIELDS = ("input_file_id", "endpoint", "completion_window", "metadata", "output_expires_after")
FINISHED = ("completed", "failed", "expired")


def batch_object(batch: StoredBatch) -> dict[str, Any]:
    errors = {"object": "list", "data": batch.errors} if batch.errors else None
    return {
        "id": batch.id, "object": "batch", "endpoint": batch.endpoint, "errors": errors,
        "input_file_id": batch.input_file_id, "completion_window": batch.completion_window, "status": batch.status,
        "output_file_id": batch.output_file_id, "error_file_id": batch.error_file_id,
        "created_at": batch.created_at, "expires_at": batch.expires_at,
        **{column: batch.times.get(column) for column in TIMESTAMPS.values()},
        "request_counts": {"total": batch.total, "completed": batch.completed, "failed": batch.failed},
        "metadata": batch.metadata, "model": None,
    }  # fmt: skip


class Batches:
    def __init__(self, service: BatchService, config: GatewayConfig, *, keyed: bool) -> None:
        self.service = service
        self.config = config
        self.keyed = keyed

    @answers
    async def create(self, request: Request) -> Response:
        body = await _json_body(request, self.config.max_body_bytes)
        owner = owner_of(request, self.keyed)
        input_file_id, metadata = _checked(body)
        store, worker = self.service.open()
        source = store.file(input_file_id, owner)
        if source is None:
            raise NotFound(f"input_file_id '{input_file_id}': no such file", param="input_file_id")
        if source.purpose != "batch":
            raise InvalidRequest(f"file '{input_file_id}' has purpose '{source.purpose}'; a batch reads a file "
                                 "uploaded with purpose 'batch'", param="input_file_id")  # fmt: skip
        now = int(time.time())
        window = body["completion_window"]
        batch = StoredBatch(
            id=new_id("batch_"), owner=owner, status="validating", input_file_id=input_file_id, endpoint=ENDPOINT,
            completion_window=window, metadata=metadata, created_at=now, expires_at=now + WINDOWS[window],
            output_draft=new_id("file-"), error_draft=new_id("file-"),
        )  # fmt: skip
        store.add_batch(batch)
        worker.count_statuses()
        worker.wake()
        return JSONResponse(batch_object(batch))

    @answers
    async def retrieve(self, request: Request) -> Response:
        return JSONResponse(batch_object(self._find(request)))

    @answers
    async def list(self, request: Request) -> Response:
        after, limit = page_params(request, 100, 20)
        found, more = self.service.open()[0].batches(owner_of(request, self.keyed), after=after, limit=limit)
        return listing([batch_object(batch) for batch in found], more)

    @answers
    async def cancel(self, request: Request) -> Response:
        batch = self._find(request)
        if batch.status in FINISHED:
            raise InvalidRequest(f"batch '{batch.id}' is {batch.status}; only an unfinished batch can be cancelled")
        store, worker = self.service.open()
        batch = store.request_cancel(batch.id, batch.owner, int(time.time())) or batch
        worker.cancel(batch.id)
        worker.count_statuses()
        return JSONResponse(batch_object(batch))

    def _find(self, request: Request) -> StoredBatch:
        batch_id = request.path_params["batch_id"]
        found = self.service.open()[0].batch(batch_id, owner_of(request, self.keyed))
        if found is None:
            raise NotFound(f"no such batch: '{batch_id}'", param="batch_id")
        return found


def _checked(body: dict[str, Any]) -> tuple[str, dict[str, str] | None]:
    """The input file id and metadata of a create request, every field checked (400 naming it)."""
    unknown = sorted(set(body) - set(FIELDS))
    if unknown:
        raise InvalidRequest(f"unsupported field '{unknown[0]}'", param=unknown[0])
    input_file_id = body.get("input_file_id")
    if not isinstance(input_file_id, str) or not input_file_id:
        raise InvalidRequest("'input_file_id' is required: the id of a file uploaded with purpose 'batch'",
                             param="input_file_id")  # fmt: skip
    if body.get("endpoint") != ENDPOINT:
        raise InvalidRequest(f"'endpoint' must be '{ENDPOINT}', the one endpoint moa-local runs in batches "
                             f"(got {json.dumps(body.get('endpoint'))})", param="endpoint")  # fmt: skip
    if body.get("completion_window") not in WINDOWS:
        raise InvalidRequest(f"'completion_window' must be '24h' (got {json.dumps(body.get('completion_window'))})",
                             param="completion_window")  # fmt: skip
    metadata = body.get("metadata")
    if metadata is not None and not _valid_metadata(metadata):
        raise InvalidRequest("'metadata' must be an object of at most 16 string keys (64 characters at most) "
                             "with string values (512 characters at most)", param="metadata")  # fmt: skip
    return input_file_id, metadata


def _valid_metadata(value: Any) -> bool:
    return (
        isinstance(value, dict) and len(value) <= 16
        and all(isinstance(k, str) and len(k) <= 64 and isinstance(v, str) and len(v) <= 512 for k, v in value.items())
    )  # fmt: skip


async def _json_body(request: Request, limit: int) -> dict[str, Any]:
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body is over the {limit}-byte limit")
        chunks.append(chunk)
    try:
        body = json.loads(b"".join(chunks))
    except (ValueError, UnicodeDecodeError):
        raise InvalidRequest("request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise InvalidRequest("request body must be a JSON object")
    return body
