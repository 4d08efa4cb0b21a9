"""The append-only result file: torn last lines cut off, complete lines kept, nothing created for nothing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from moa_local.errors import BatchInputError
from moa_local.jobs.result_file import ResultFile


def recovered(result: ResultFile) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    assert result.recover(records.append) == len(records)
    return records


def test_appended_records_are_whole_lines_read_back_in_order(tmp_path: Path) -> None:
    result = ResultFile(tmp_path / "out.jsonl", sync_every=2)
    for i in range(5):
        result.append({"custom_id": f"r{i}", "text": "ünïcode\nnewline"})
    result.close()
    data = (tmp_path / "out.jsonl").read_bytes()
    assert data.endswith(b"\n") and data.count(b"\n") == 5
    assert [r["custom_id"] for r in recovered(ResultFile(tmp_path / "out.jsonl"))] == [f"r{i}" for i in range(5)]


@pytest.mark.parametrize(
    "tail",
    [b'{"custom_id": "r2", "resp', b'{"custom_id": "r2"}', b'{"custom_id": "r2", "x": 1\n', b"\x00\x00\x00\n"],
    ids=["half a line", "a whole object but no newline", "a newline after a torn object", "zeros after a crash"],
)
def test_a_torn_last_line_is_cut_off_and_the_next_append_starts_clean(tmp_path: Path, tail: bytes) -> None:
    path = tmp_path / "out.jsonl"
    good = b'{"custom_id": "r0"}\n{"custom_id": "r1"}\n'
    path.write_bytes(good + tail)
    result = ResultFile(path)
    assert [r["custom_id"] for r in recovered(result)] == ["r0", "r1"]
    assert result.dropped == len(tail) and path.read_bytes() == good
    result.append({"custom_id": "r2"})
    result.close()
    assert [json.loads(raw)["custom_id"] for raw in path.read_bytes().splitlines()] == ["r0", "r1", "r2"]


def test_a_bad_line_before_the_last_means_another_file_and_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "notes.jsonl"
    path.write_bytes(b'{"custom_id": "r0"}\nsome notes\n{"custom_id": "r1"}\n')
    with pytest.raises(BatchInputError, match=r"notes\.jsonl: line 2 is not a JSON object; not a result file"):
        ResultFile(path).recover(lambda record: None)
    assert path.read_bytes().count(b"\n") == 3  # untouched


def test_a_file_is_created_on_the_first_append_only(tmp_path: Path) -> None:
    result = ResultFile(tmp_path / "errors.jsonl")
    assert recovered(result) == []
    result.close()
    assert not (tmp_path / "errors.jsonl").exists()
    result.create()
    assert (tmp_path / "errors.jsonl").read_bytes() == b""


def test_an_unwritable_path_is_one_clear_error(tmp_path: Path) -> None:
    result = ResultFile(tmp_path / "missing-dir" / "out.jsonl")
    with pytest.raises(BatchInputError, match=r"out\.jsonl: cannot write \(No such file or directory\)$"):
        result.append({"custom_id": "a"})
