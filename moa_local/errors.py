"""The error tree of moa-local.

    MoaError
    ├── ConfigError              a config file is wrong (file, key path, value)
    ├── ServingError             an engine process could not be set up, started or stopped
    ├── BenchError               a benchmark cannot run (bad levels, dataset, output folder)
    ├── BatchInputError          a batch input (or result) file cannot be used at all
    └── RequestFailed            a request could not be answered; carries an HTTP status
        ├── InvalidRequest       400  a field of the request is wrong
        ├── AuthError            401  missing or wrong API key
        ├── NotFound             404  no such file or batch (for this API key)
        ├── ModelNotFound        404  unknown model name
        ├── RequestTimeout       408  the request body did not arrive in time
        ├── PayloadTooLarge      413  body or prompt over a limit
        ├── Overloaded           429  over the gateway's in-flight limit
        ├── BackendError         502  an engine call failed
        │   ├── EndpointTimeout        the call hit its timeout
        │   ├── EndpointUnavailable    connection refused/reset, or circuit open
        │   ├── EndpointStatusError    the engine answered 4xx/5xx
        │   └── StreamBroken           the stream ended without finishing
        ├── QuorumError          503  too few agents of a layer answered
        └── DeadlineError        504  the request's deadline passed

Engine SDK errors are translated into this tree once, in `engines/`; the
gateway maps each class to an HTTP status and the OpenAI error envelope in
one place (`api/error_response.py`).
"""

from __future__ import annotations


class MoaError(Exception):
    """Base of every error moa-local raises on purpose."""


class ConfigError(MoaError):
    """A config file is invalid; the message names file, key path and value."""


class ServingError(MoaError):
    """An engine process could not be set up, started or stopped."""


class BenchError(MoaError):
    """A benchmark cannot run as asked (its levels, dataset or output folder)."""


class BatchInputError(MoaError):
    """A batch file is unusable as a whole (empty, not JSONL, unreadable); bad lines are not this."""


class RequestFailed(MoaError):
    status = 500
    kind = "server_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class InvalidRequest(RequestFailed):
    status = 400
    kind = "invalid_request_error"


class AuthError(RequestFailed):
    status = 401
    kind = "authentication_error"
    code = "invalid_api_key"


class NotFound(RequestFailed):
    status = 404
    kind = "invalid_request_error"
    code = "not_found"


class ModelNotFound(RequestFailed):
    status = 404
    kind = "invalid_request_error"
    code = "model_not_found"


class RequestTimeout(RequestFailed):
    status = 408
    kind = "invalid_request_error"
    code = "request_timeout"


class PayloadTooLarge(RequestFailed):
    status = 413
    kind = "invalid_request_error"
    code = "request_too_large"


class Overloaded(RequestFailed):
    status = 429
    kind = "rate_limit_error"
    code = "too_many_requests"

    def __init__(self, message: str, *, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class BackendError(RequestFailed):
    """An engine call failed. `retryable` says whether trying again may help."""

    status = 502
    kind = "backend_error"
    code = "backend_failed"
    retryable = False

    def __init__(self, endpoint: str, message: str) -> None:
        super().__init__(f"{endpoint}: {message}")
        self.endpoint = endpoint
        self.reason = message


class EndpointTimeout(BackendError):
    code = "backend_timeout"
    retryable = True


class EndpointUnavailable(BackendError):
    code = "backend_unavailable"
    retryable = True


class EndpointStatusError(BackendError):
    def __init__(
        self, endpoint: str, message: str, *, upstream_status: int, retry_after_s: float | None = None
    ) -> None:
        super().__init__(endpoint, message)
        self.upstream_status = upstream_status
        self.retry_after_s = retry_after_s  # the engine's Retry-After, if it sent one
        self.retryable = upstream_status == 429 or upstream_status >= 500


class StreamBroken(BackendError):
    code = "backend_stream_broken"


class QuorumError(RequestFailed):
    status = 503
    kind = "service_unavailable"
    code = "quorum_not_reached"


class DeadlineError(RequestFailed):
    status = 504
    kind = "timeout_error"
    code = "deadline_exceeded"


def error_body_message(body: object) -> str | None:
    """The message of an OpenAI error body: {"error": {"message": ...}} or {"message": ...}."""
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
        if body.get("message"):
            return str(body["message"])
    return None
