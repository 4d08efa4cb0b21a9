"""Engine failures, translated once into the error tree of `errors.py`.

`translate` maps a transport error of `upstream.py` or an SDK error of the
probes' `AsyncOpenAI` client to a `BackendError`; `status_error` turns an
engine's 4xx/5xx answer (with its OpenAI error body and any Retry-After)
into an `EndpointStatusError`; `counts_against` says whether a failure is a
verdict on the engine's health (for its circuit breaker). What to do about
a failure (retry, back off, trip the breaker) is the endpoint's, not this
module's.
"""

from __future__ import annotations

import json
from typing import Any

import httpx2
import openai

from moa_local.engines.upstream import ConnectFailed, ConnectionBroken
from moa_local.errors import (
    BackendError,
    EndpointStatusError,
    EndpointTimeout,
    EndpointUnavailable,
    StreamBroken,
    error_body_message,
)

MESSAGE_CHARS = 300  # an engine's error message is cut to this many characters


def translate(endpoint: str, exc: BaseException, started: bool) -> BackendError:
    """Map a transport or SDK error to our error tree."""
    if isinstance(exc, ConnectFailed):
        return EndpointUnavailable(endpoint, f"cannot connect to the engine ({exc.kind})")
    if isinstance(exc, ConnectionBroken):
        return StreamBroken(endpoint, f"the stream broke off ({exc.kind})")
    if isinstance(exc, json.JSONDecodeError):  # a data line that is not JSON
        return StreamBroken(endpoint, f"the engine sent a malformed stream ({type(exc).__name__})")
    if isinstance(exc, openai.APITimeoutError | httpx2.TimeoutException):
        return EndpointTimeout(endpoint, "timed out waiting for the engine")
    if isinstance(exc, openai.APIStatusError):
        message = (error_body_message(exc.body) or exc.message)[:MESSAGE_CHARS]
        return EndpointStatusError(
            endpoint, f"engine answered {exc.status_code}: {message}", upstream_status=exc.status_code
        )
    if started or isinstance(exc, httpx2.RemoteProtocolError | httpx2.ReadError):
        return StreamBroken(endpoint, f"the stream broke off ({type(exc).__name__})")
    if isinstance(exc, openai.APIConnectionError | httpx2.TransportError):
        cause = exc.__cause__ or exc
        return EndpointUnavailable(endpoint, f"cannot connect to the engine ({type(cause).__name__})")
    if isinstance(exc, openai.APIError):
        return StreamBroken(endpoint, f"the engine sent an error: {exc.message}")
    return BackendError(endpoint, f"unexpected {type(exc).__name__}: {exc}")


def status_error(endpoint: str, status: int, body: bytes, headers: dict[str, str]) -> EndpointStatusError:
    """An engine's 4xx/5xx, with the message from its OpenAI error body (or its text)."""
    try:
        data: Any = json.loads(body)
    except ValueError:
        data = None
    message = error_body_message(data) or body.decode("utf-8", "replace").strip() or f"HTTP {status}"
    retry_after = headers.get("retry-after", "")
    return EndpointStatusError(
        endpoint, f"engine answered {status}: {message[:MESSAGE_CHARS]}", upstream_status=status,
        retry_after_s=float(retry_after) if retry_after.replace(".", "", 1).isdigit() else None,
    )  # fmt: skip


def counts_against(exc: BackendError) -> bool:
    """Client-side mistakes (4xx other than 429) say nothing about the engine's health."""
    if isinstance(exc, EndpointStatusError):
        return exc.upstream_status == 429 or exc.upstream_status >= 500
    return True
