"""One non-streamed chat completion from a request body, as the gateway would answer it: the batch executor.

`complete` takes a decoded chat-completions body (a batch line's `body`),
validates it as the gateway does (`protocol.py`), resolves its model,
runs the pipeline to the end and returns the HTTP status and JSON body
the gateway's non-streamed response would carry: the `chat.completion`
object (with `usage` summed over every call, and `moa` when the body asks
for the trace) on 200, the OpenAI error envelope otherwise. Every refusal
or failure comes back as a status and envelope; only cancellation leaves
as an exception (it closes the run's upstream calls).

Left out on purpose: HTTP (no headers, no streaming: a batch line has
neither), the gateway's in-flight limit and request log. The payload
builder repeats `chat_response.py`'s non-streamed one; it is small, and
the two are to become one function.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from contextlib import aclosing
from dataclasses import replace
from typing import Any

from moa_local.api.error_response import envelope, internal_error
from moa_local.api.protocol import completion_object, parse_chat_body
from moa_local.config import Config
from moa_local.errors import RequestFailed
from moa_local.mixture.catalog import model_label, run_spec
from moa_local.mixture.events import Done
from moa_local.mixture.pipeline import Pipeline
from moa_local.mixture.spec import Priority
from moa_local.mixture.trace import RequestTrace

logger = logging.getLogger("moa_local.batch")

TraceSink = Callable[[RequestTrace], None]


async def complete(
    config: Config,
    pipeline: Pipeline,
    body: dict[str, Any],
    request_id: str,
    *,
    priority: Priority = "batch",
    on_trace: TraceSink | None = None,
) -> tuple[int, dict[str, Any]]:
    """(HTTP status, JSON body) of `body` answered as the gateway answers it, without streaming.

    `on_trace` receives the trace of every answered request whose body did
    not ask for it, so a caller can account engine time without changing
    the answer (a body that asks finds it under `moa`).
    """
    created = int(time.time())
    try:
        chat = parse_chat_body(body, config.gateway.max_body_bytes)
        spec = replace(run_spec(config, chat.model, chat.overrides()), priority=priority)
    except RequestFailed as exc:
        pipeline.metrics.requests.labels(model_label(config, body.get("model")), "rejected").inc()
        return exc.status, envelope(exc)
    try:
        async with aclosing(pipeline.run(spec, chat.conversation())) as events:
            async for event in events:
                if isinstance(event, Done):
                    if on_trace is not None and not chat.wants_trace:
                        on_trace(event.trace)
                    return 200, completion_object(f"chatcmpl-{uuid.uuid4().hex[:24]}", chat, event, created)
    except RequestFailed as exc:
        return exc.status, envelope(exc)
    except Exception:  # a bug: the line fails as the gateway's request would, the job goes on
        logger.exception("batch request %s failed with an internal error", request_id)
        error = internal_error()
        return error.status, envelope(error)
    raise AssertionError("the pipeline ended without an answer")
