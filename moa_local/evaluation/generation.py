"""Requests through the batch runner: one OpenAI Batch JSONL per model and round, answers kept in the folder.

    rounds = Rounds(folder, max_inflight=8, on_start=view_factory)
    answers = await rounds.run(execute, "answers", "qwen.turn1", [(custom_id, body), ...])

`run` writes the requests as `<folder>/<kind>/<name>.requests.jsonl` (a
batch input, rewritten each time: it is derived from the items and the
earlier rounds' answers, so it is the same on a rerun), runs them with
`jobs.BatchRunner` into `<name>.jsonl` (answers) and `<name>.errors.jsonl`
(failed requests), and reads both back. The runner resumes: a rerun skips
every custom_id already in either file, so an interrupted evaluation
continues where it stopped and nothing is asked twice. A failed request is
an answer too (kept, not retried; delete the errors file to retry).
`read` reads a round without running anything (`--score-only`).

Left out on purpose: what the requests say (the suites' and `run.py`'s)
and rendering progress (the CLI passes a view).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from moa_local.evaluation.errors import EvalError
from moa_local.evaluation.suite import Answer
from moa_local.jobs import BatchRunner, Execute, Progress, ResultFile, read_input
from moa_local.jobs.format import URL

ProgressView = Callable[[Progress], None]
ViewFactory = Callable[[str, int], tuple[ProgressView, ProgressView]]  # (label, total) -> (update, close)


class Rounds:
    def __init__(self, folder: Path, *, max_inflight: int, views: ViewFactory | None = None) -> None:
        self.folder = folder
        self.max_inflight = max_inflight
        self.views = views

    def paths(self, kind: str, name: str) -> tuple[Path, Path, Path]:
        base = self.folder / kind
        return base / f"{name}.requests.jsonl", base / f"{name}.jsonl", base / f"{name}.errors.jsonl"

    async def run(
        self, execute: Execute, kind: str, name: str, requests: list[tuple[str, dict[str, Any]]]
    ) -> dict[str, Answer]:
        """Every request answered (this run or an earlier one): custom_id -> answer."""
        if not requests:
            return {}
        inputs, output, errors = self.paths(kind, name)
        inputs.parent.mkdir(parents=True, exist_ok=True)
        write_requests(inputs, requests)
        update, close = self.views(f"{name}", len(requests)) if self.views else (None, None)
        runner = BatchRunner(execute, ResultFile(output), ResultFile(errors), max_inflight=self.max_inflight,
                             on_progress=update)  # fmt: skip
        try:
            await runner.run(read_input(inputs), len(requests))
        finally:
            if close is not None:
                close(runner.progress())
        return self.read(kind, name)

    def read(self, kind: str, name: str) -> dict[str, Answer]:
        """The answers a round holds so far (none if it never ran)."""
        _, output, errors = self.paths(kind, name)
        found: dict[str, Answer] = {}
        for record in read_records(errors):
            error = record.get("error") or {}
            found[str(record.get("custom_id"))] = Answer(False, error=str(error.get("message") or "failed"))
        for record in read_records(output):
            found[str(record["custom_id"])] = answer_of(record["response"]["body"])
        return found


def answer_of(body: dict[str, Any]) -> Answer:
    choice = (body.get("choices") or [{}])[0]
    content = (choice.get("message") or {}).get("content") or ""
    return Answer(True, str(content), None, dict(body.get("usage") or {}), body.get("moa"), body)


def request_line(custom_id: str, body: dict[str, Any]) -> dict[str, Any]:
    return {"custom_id": custom_id, "method": "POST", "url": URL, "body": body}


def write_requests(path: Path, requests: Iterable[tuple[str, dict[str, Any]]]) -> None:
    partial = path.with_name(path.name + ".part")
    with partial.open("w", encoding="utf-8") as handle:
        for custom_id, body in requests:
            handle.write(json.dumps(request_line(custom_id, body), ensure_ascii=False) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    partial.replace(path)


def read_records(path: Path) -> list[dict[str, Any]]:
    """The complete lines of a result file (a torn last line is the runner's to cut off, and skipped here)."""
    if not path.exists():
        return []
    records = []
    try:
        lines = path.read_bytes().split(b"\n")
    except OSError as exc:
        raise EvalError(f"{path}: cannot read ({exc.strerror})") from None
    for raw in lines[:-1]:  # the part after the last newline is empty or torn
        try:
            record = json.loads(raw)
        except ValueError:
            raise EvalError(f"{path}: a line is not JSON; not a result file of this evaluation") from None
        if isinstance(record, dict):
            records.append(record)
    return records
