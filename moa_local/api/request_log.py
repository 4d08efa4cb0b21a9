"""The gateway's one JSON log line per request, on the "moa_local.gateway" logger.

A line carries the request id, model, status, outcome, latency and, once the
pipeline ran, token counts and the error message. Prompt and answer text go
in only with `gateway.log_content` (debug). Counting requests in metrics and
in flight is left to the gateway; this module only writes the line.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from moa_local.api.chat_response import ChatResponse

logger = logging.getLogger("moa_local.gateway")


def log_request(
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


def log_chat(response: ChatResponse, latency_s: float, *, with_content: bool) -> None:
    """The line for a chat completion that ran (or was cancelled), from what its response kept."""
    result = response.result
    usage = result.trace.usage().as_openai() if result.trace else None
    content = _content(response) if with_content else None
    log_request(response.request_id, response.request.model, result.status, result.outcome, latency_s, usage,
                result.error, content)  # fmt: skip


def _content(response: ChatResponse) -> dict[str, str]:
    """The text of a request for the log line: its last user message and the answer."""
    users = [message["content"] for message in response.request.conversation() if message["role"] == "user"]
    return {"prompt": users[-1] if users else "", "answer": response.result.answer or ""}
