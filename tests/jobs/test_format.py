"""The OpenAI Batch file format: each kind of bad line with its exact message, refused inputs, record shapes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from moa_local.errors import BatchInputError
from moa_local.jobs.format import (
    BatchItem,
    LineFailure,
    check_input,
    error_record,
    ok_record,
    parse_line,
    read_input,
    request_failure,
    resume_keys,
)

BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def line(**fields: Any) -> bytes:
    fields = {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": BODY, **fields}
    return json.dumps(fields).encode()


@pytest.mark.parametrize(
    ("raw", "code", "message", "custom_id"),
    [
        (b"{not json", "invalid_json", "line 7: not valid JSON (Expecting property name enclosed in double quotes "
         "at column 2)", None),
        (b"\xff\xfe{}", "invalid_json", "line 7: not valid UTF-8 text", None),
        (b'["custom_id"]', "invalid_json", "line 7: expected a JSON object, got an array", None),
        (b'"text"', "invalid_json", "line 7: expected a JSON object, got a string", None),
        (line(custom_id=None), "missing_custom_id", "line 7: 'custom_id' is required", None),
        (line(custom_id=12), "invalid_custom_id", "line 7: 'custom_id' must be a non-empty string (got 12)", None),
        (line(custom_id=""), "invalid_custom_id", "line 7: 'custom_id' must be a non-empty string (got \"\")", None),
        (line(method="GET"), "invalid_method", "line 7: 'method' must be \"POST\" (got \"GET\")", "a"),
        (line(method=None), "invalid_method", "line 7: 'method' must be \"POST\" (got null)", "a"),
        (line(url="/v1/embeddings"), "invalid_url",
         "line 7: 'url' must be \"/v1/chat/completions\" (got \"/v1/embeddings\")", "a"),
        (line(body=None), "invalid_body", "line 7: 'body' is required", "a"),
        (line(body=[1]), "invalid_body", "line 7: 'body' must be a JSON object (got an array)", "a"),
        (line(body={**BODY, "stream": True}), "invalid_body",
         "line 7: 'body.stream' must be absent or false in a batch", "a"),
    ],
)  # fmt: skip
def test_each_bad_line_is_a_failure_naming_its_line(raw: bytes, code: str, message: str, custom_id: str | None) -> None:
    assert parse_line(7, raw, {}) == LineFailure(7, custom_id, code, message)


def test_a_good_line_is_an_item_and_stream_false_is_fine() -> None:
    body = {**BODY, "stream": False}
    assert parse_line(3, line(body=body), {}) == BatchItem(3, "a", body)


def test_a_duplicate_custom_id_fails_and_the_first_use_wins(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"\n".join([line(), b"", b"   ", line(custom_id="b"), line()]) + b"\n")
    assert list(read_input(path)) == [
        BatchItem(1, "a", BODY),
        BatchItem(4, "b", BODY),
        LineFailure(5, "a", "duplicate_custom_id", 'line 5: duplicate custom_id "a" (first on line 1)'),
    ]
    assert check_input(path) == 3  # blank lines are not requests


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "{path}: empty: a batch input needs one JSON request per line"),
        (b"\n  \n\n", "{path}: empty: a batch input needs one JSON request per line"),
        (b"id,prompt\n1,hello\n", '{path}: not a JSONL batch file: line 1 is not a JSON object (expected one '
         '{{"custom_id", "method", "url", "body"}} object per line)'),
        (b'\n[{"custom_id": "a"}]\n', '{path}: not a JSONL batch file: line 2 is not a JSON object (expected one '
         '{{"custom_id", "method", "url", "body"}} object per line)'),
    ],
)  # fmt: skip
def test_an_input_that_is_not_jsonl_or_empty_is_refused_whole(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(content)
    with pytest.raises(BatchInputError) as caught:
        check_input(path)
    assert str(caught.value) == message.format(path=path)


def test_a_missing_input_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BatchInputError, match=r"none\.jsonl: cannot read \(No such file or directory\)$"):
        check_input(tmp_path / "none.jsonl")


def test_records_have_openais_shapes_and_resume_keys() -> None:
    ok = ok_record("a", "req1", {"object": "chat.completion"})
    assert ok["id"].startswith("batch_req_") and ok["error"] is None
    assert ok["response"] == {"status_code": 200, "request_id": "req1", "body": {"object": "chat.completion"}}
    assert resume_keys(ok) == ("a", None)
    envelope = {"error": {"message": "e: engine answered 500", "type": "backend_error", "param": None,
                          "code": "backend_failed"}}  # fmt: skip
    failed = error_record(request_failure(BatchItem(4, "b", BODY), 502, envelope), (502, "req2", envelope))
    assert failed["custom_id"] == "b" and failed["id"].startswith("batch_req_")
    assert failed["response"] == {"status_code": 502, "request_id": "req2", "body": envelope}
    assert failed["error"] == {"code": "backend_failed", "message": "line 4: e: engine answered 500"}
    assert resume_keys(failed) == ("b", 4)
    bad = error_record(LineFailure(9, None, "invalid_json", "line 9: not valid JSON"))
    assert bad["response"] is None and resume_keys(bad) == (None, 9)
    duplicate = error_record(LineFailure(5, "a", "duplicate_custom_id", "line 5: duplicate"))
    assert resume_keys(duplicate) == (None, 5)  # the duplicate does not stand for the first "a"


def test_a_refusal_without_a_code_is_named_by_its_type() -> None:
    envelope = {"error": {"message": "'n' is not supported", "type": "invalid_request_error", "code": None}}
    failure = request_failure(BatchItem(2, "c", BODY), 400, envelope)
    assert (failure.code, failure.message) == ("invalid_request_error", "line 2: 'n' is not supported")
