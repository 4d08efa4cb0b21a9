"""Translation of engine failures into the error tree: plain functions, no I/O."""

from __future__ import annotations

import json

import pytest

from moa_local.engines.failures import counts_against, status_error, translate
from moa_local.engines.upstream import ConnectFailed, ConnectionBroken
from moa_local.errors import (
    BackendError,
    EndpointStatusError,
    EndpointTimeout,
    EndpointUnavailable,
    StreamBroken,
    error_body_message,
)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"error": {"message": "prompt too long"}}, "prompt too long"),
        ({"object": "error", "message": "warming up", "code": 503}, "warming up"),
        ({"error": "flat", "message": "top level"}, "top level"),
        ({"error": {"message": ""}}, None),
        ({"detail": "no message"}, None),
        ("not a dict", None),
        (None, None),
    ],
)
def test_error_body_message_reads_both_openai_shapes(body: object, message: str | None) -> None:
    assert error_body_message(body) == message


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (json.dumps({"error": {"message": "engine exploded"}}).encode(), "engine answered 500: engine exploded"),
        (b"  plain text failure\n", "engine answered 500: plain text failure"),
        (b"", "engine answered 500: HTTP 500"),
        (json.dumps({"error": {"message": "x" * 400}}).encode(), "engine answered 500: " + "x" * 300),
    ],
)
def test_status_error_takes_the_body_message_or_its_text(body: bytes, reason: str) -> None:
    error = status_error("e", 500, body, {})
    assert (error.reason, error.upstream_status, error.retryable) == (reason, 500, True)


@pytest.mark.parametrize(("header", "seconds"), [("2", 2.0), ("0.5", 0.5), ("soon", None), ("", None)])
def test_status_error_keeps_a_numeric_retry_after(header: str, seconds: float | None) -> None:
    error = status_error("e", 429, b"{}", {"retry-after": header} if header else {})
    assert error.retry_after_s == seconds


def test_transport_errors_become_backend_errors() -> None:
    refused = translate("e", ConnectFailed("ConnectionRefusedError", "refused"), False)
    assert isinstance(refused, EndpointUnavailable)
    assert refused.reason == "cannot connect to the engine (ConnectionRefusedError)"
    broken = translate("e", ConnectionBroken("ConnectionResetError", answered=True), True)
    assert isinstance(broken, StreamBroken) and broken.reason == "the stream broke off (ConnectionResetError)"
    assert isinstance(translate("e", json.JSONDecodeError("bad", "x", 0), True), StreamBroken)
    unexpected = translate("e", KeyError("k"), False)
    assert type(unexpected) is BackendError and unexpected.reason == "unexpected KeyError: 'k'"


@pytest.mark.parametrize(
    ("error", "counts"),
    [
        (EndpointStatusError("e", "", upstream_status=400), False),
        (EndpointStatusError("e", "", upstream_status=429), True),
        (EndpointStatusError("e", "", upstream_status=503), True),
        (EndpointTimeout("e", ""), True),
        (StreamBroken("e", ""), True),
    ],
)
def test_only_engine_side_failures_count_against_its_health(error: BackendError, counts: bool) -> None:
    assert counts_against(error) is counts
