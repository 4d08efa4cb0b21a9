"""The OpenAI Batch file format: input lines in, output and error lines out.

An input file holds one JSON object per line, `{"custom_id", "method":
"POST", "url": "/v1/chat/completions", "body"}` (the format of OpenAI's
Batch API and of `vllm run-batch`); blank lines are skipped. `read_input`
turns each line into a `BatchItem`, or a `LineFailure` naming the line
and what is wrong with it (invalid JSON, a missing or duplicate
`custom_id`, another method or url, a body that is not an object or asks
to stream). `check_input` refuses a file that is not JSONL at all (its
first request line is not a JSON object) or holds no request, before
anything runs. Output records follow OpenAI's shapes:

    ok:    {"id", "custom_id", "response": {"status_code": 200, "request_id", "body"}, "error": null}
    error: {"id", "custom_id", "response": null | {"status_code", "request_id", "body"}, "error": {"code", "message"}}

Every error message starts with "line N: ", N the 1-based input line;
`resume_keys` reads the custom_id and line a written record accounts for.

Left out on purpose: whether a body is a chat request the gateway accepts
(`api/completion.py` decides that when the line runs) and any I/O on the
output side (`result_file.py`).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moa_local.errors import BatchInputError

METHOD = "POST"
URL = "/v1/chat/completions"
DUPLICATE = "duplicate_custom_id"
_LINE = re.compile(r"^line (\d+): ")


@dataclass(frozen=True)
class BatchItem:
    line_no: int
    custom_id: str
    body: dict[str, Any]


@dataclass(frozen=True)
class LineFailure:
    """A line that did not get an answer; `message` starts with "line N: "."""

    line_no: int
    custom_id: str | None
    code: str
    message: str


def check_input(path: Path) -> int:
    """The number of request (non-blank) lines; BatchInputError if the file is unreadable, empty or not JSONL."""
    count = 0
    try:
        with path.open("rb") as handle:
            for line_no, raw in enumerate(handle, start=1):
                if not raw.strip():
                    continue
                count += 1
                if count == 1:
                    _check_first(path, line_no, raw)
    except OSError as exc:
        raise BatchInputError(f"{path}: cannot read ({exc.strerror})") from None
    if count == 0:
        raise BatchInputError(f"{path}: empty: a batch input needs one JSON request per line")
    return count


def _check_first(path: Path, line_no: int, raw: bytes) -> None:
    try:
        first = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        first = None
    if not isinstance(first, dict):
        raise BatchInputError(
            f"{path}: not a JSONL batch file: line {line_no} is not a JSON object "
            '(expected one {"custom_id", "method", "url", "body"} object per line)'
        )


def read_input(path: Path) -> Iterator[BatchItem | LineFailure]:
    """Every request line of the file in order, as an item or a failure; the first use of a custom_id wins."""
    seen: dict[str, int] = {}
    try:
        with path.open("rb") as handle:
            for line_no, raw in enumerate(handle, start=1):
                if raw.strip():
                    yield parse_line(line_no, raw, seen)
    except OSError as exc:
        raise BatchInputError(f"{path}: cannot read ({exc.strerror})") from None


def parse_line(line_no: int, raw: bytes, seen: dict[str, int]) -> BatchItem | LineFailure:
    """One request line; `seen` maps each custom_id taken so far to its line, and is updated."""

    def fail(code: str, message: str, custom_id: str | None = None) -> LineFailure:
        return LineFailure(line_no, custom_id, code, f"line {line_no}: {message}")

    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return fail("invalid_json", "not valid UTF-8 text")
    try:
        line = json.loads(text)
    except json.JSONDecodeError as exc:
        return fail("invalid_json", f"not valid JSON ({exc.msg} at column {exc.colno})")
    if not isinstance(line, dict):
        return fail("invalid_json", f"expected a JSON object, got {_kind(line)}")
    custom_id = line.get("custom_id")
    if custom_id is None:
        return fail("missing_custom_id", "'custom_id' is required")
    if not isinstance(custom_id, str) or not custom_id:
        return fail("invalid_custom_id", f"'custom_id' must be a non-empty string (got {_quote(custom_id)})")
    if custom_id in seen:
        return fail(DUPLICATE, f"duplicate custom_id {_quote(custom_id)} (first on line {seen[custom_id]})", custom_id)
    seen[custom_id] = line_no
    method, url, body = line.get("method"), line.get("url"), line.get("body")
    if method != METHOD:
        return fail("invalid_method", f"'method' must be \"{METHOD}\" (got {_quote(method)})", custom_id)
    if url != URL:
        return fail("invalid_url", f"'url' must be \"{URL}\" (got {_quote(url)})", custom_id)
    if not isinstance(body, dict):
        what = "is required" if body is None else f"must be a JSON object (got {_kind(body)})"
        return fail("invalid_body", f"'body' {what}", custom_id)
    if body.get("stream") not in (None, False):
        return fail("invalid_body", "'body.stream' must be absent or false in a batch", custom_id)
    return BatchItem(line_no, custom_id, body)


def ok_record(custom_id: str, request_id: str, body: dict[str, Any]) -> dict[str, Any]:
    response = {"status_code": 200, "request_id": request_id, "body": body}
    return {"id": _record_id(), "custom_id": custom_id, "response": response, "error": None}


def error_record(failure: LineFailure, response: tuple[int, str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """A failure's error-file line; `response` is (status, request_id, error body) when the request ran."""
    answered = None
    if response is not None:
        status, request_id, body = response
        answered = {"status_code": status, "request_id": request_id, "body": body}
    error = {"code": failure.code, "message": failure.message}
    return {"id": _record_id(), "custom_id": failure.custom_id, "response": answered, "error": error}


def request_failure(item: BatchItem, status: int, body: Mapping[str, Any]) -> LineFailure:
    """An item whose request got an error answer (the OpenAI envelope in `body`)."""
    inner = body.get("error")
    error = inner if isinstance(inner, Mapping) else {}
    code = error.get("code") or error.get("type") or f"http_{status}"
    message = error.get("message") or f"the request failed with status {status}"
    return LineFailure(item.line_no, item.custom_id, str(code), f"line {item.line_no}: {message}")


def resume_keys(record: Mapping[str, Any]) -> tuple[str | None, int | None]:
    """The custom_id a written record answers, and the input line an error record accounts for."""
    error = record.get("error")
    code = error.get("code") if isinstance(error, Mapping) else None
    custom_id = record.get("custom_id")
    answered = custom_id if isinstance(custom_id, str) and code != DUPLICATE else None
    match = _LINE.match(str(error.get("message", ""))) if isinstance(error, Mapping) else None
    return answered, int(match.group(1)) if match else None


def _record_id() -> str:
    return f"batch_req_{uuid.uuid4().hex}"


def _kind(value: Any) -> str:
    names = {list: "an array", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _quote(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)[:80]
