"""Errors as HTTP: the same status, headers and envelope whichever way they leave."""

from __future__ import annotations

import json
from typing import Any

import pytest
from starlette.exceptions import HTTPException

from moa_local.api.error_response import (
    envelope,
    error_event,
    error_response,
    internal_error,
    route_error,
    send_error,
)
from moa_local.errors import (
    AuthError,
    DeadlineError,
    EndpointTimeout,
    InvalidRequest,
    ModelNotFound,
    Overloaded,
    PayloadTooLarge,
    QuorumError,
    RequestFailed,
)

ERRORS: list[RequestFailed] = [
    InvalidRequest("'messages' is required", param="messages"),
    AuthError("invalid API key"),
    ModelNotFound("no mixture or endpoint 'x'", param="model"),
    PayloadTooLarge("request body is over the 4096-byte limit"),
    Overloaded("more than 1 requests in flight; retry shortly", retry_after_s=3),
    EndpointTimeout("agg", "no answer within 1s"),
    QuorumError("layer 1: 0 of 2 agents answered"),
    DeadlineError("deadline of 0.5s passed"),
    internal_error(),
]


async def sent(exc: RequestFailed) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []

    async def send(message: Any) -> None:
        messages.append(message)

    await send_error(send, exc)
    return messages


@pytest.mark.parametrize("exc", ERRORS, ids=lambda exc: type(exc).__name__)
async def test_response_and_asgi_send_carry_the_same_bytes(exc: RequestFailed) -> None:
    start, body = await sent(exc)
    response = error_response(exc)
    assert start == {"type": "http.response.start", "status": exc.status, "headers": response.raw_headers}
    assert body == {"type": "http.response.body", "body": response.body, "more_body": False}
    assert response.status_code == exc.status
    assert json.loads(bytes(response.body)) == envelope(exc)
    headers = dict(response.raw_headers)
    assert headers[b"content-type"] == b"application/json"
    assert headers[b"content-length"] == str(len(response.body)).encode()
    assert (b"retry-after" in headers) == isinstance(exc, Overloaded)
    assert (headers.get(b"www-authenticate") == b"Bearer") == isinstance(exc, AuthError)


def test_overloaded_says_when_to_retry() -> None:
    headers = dict(error_response(Overloaded("busy", retry_after_s=3)).raw_headers)
    assert headers[b"retry-after"] == b"3"


def test_envelope_has_the_four_openai_fields() -> None:
    exc = ModelNotFound("no mixture or endpoint 'x'", param="model")
    assert envelope(exc) == {
        "error": {
            "message": "no mixture or endpoint 'x'",
            "type": "invalid_request_error",
            "param": "model",
            "code": "model_not_found",
        }
    }


def test_error_event_is_one_sse_event_with_the_envelope() -> None:
    exc = EndpointTimeout("agg", "stream broke off")
    event = error_event(exc)
    assert event.startswith(b"data: {") and event.endswith(b"}\n\n") and event.count(b"\n") == 2
    assert json.loads(event.removeprefix(b"data: ")) == envelope(exc)


@pytest.mark.parametrize(
    ("status", "code"),
    [(404, "not_found"), (405, "method_not_allowed")],
)
def test_route_errors_name_the_route(status: int, code: str) -> None:
    error = route_error(HTTPException(status), "GET", "/v1/nope")
    assert (error.status, error.kind, error.code) == (status, "invalid_request_error", code)
    assert error.message == "no route GET /v1/nope"
    assert error_response(error).status_code == status


def test_other_http_exceptions_keep_their_detail() -> None:
    error = route_error(HTTPException(400, detail="bad form"), "POST", "/x")
    assert (error.status, error.code, error.message) == (400, None, "bad form")
    assert RequestFailed.status == 500 and RequestFailed.code is None  # the class is left as it was


def test_internal_error_points_to_the_log() -> None:
    exc = internal_error()
    assert exc.status == 500 and exc.kind == "server_error" and "gateway log" in exc.message
