"""The batch worker over a real store, with plain functions as executors: resume, expiry, a bad input file."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

from moa_local.jobs.records import StoredBatch, new_id
from moa_local.jobs.store import Store
from moa_local.jobs.worker import BatchWorker
from moa_local.metrics import Metrics


def line(custom_id: str) -> str:
    body = {"model": "m", "messages": [{"role": "user", "content": custom_id}]}
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body})


def add(store: Store, text: str, *, expires_in_s: int = 86400, status: str = "validating") -> StoredBatch:
    input_id = new_id("file-")
    store.staging(input_id).write_text(text)
    store.add_file(input_id, "", "batch", "in.jsonl", 0)
    now = int(time.time())
    return store.add_batch(StoredBatch(
        id=new_id("batch_"), owner="", status=status, input_file_id=input_id, endpoint="/v1/chat/completions",
        completion_window="24h", metadata=None, created_at=now, expires_at=now + expires_in_s,
        output_draft=new_id("file-"), error_draft=new_id("file-"),
    ))  # fmt: skip


class Engine:
    """An executor answering every body at once (or never, but for "a"), remembering which it saw."""

    def __init__(self, hang: bool = False) -> None:
        self.seen: list[str] = []
        self.hang = hang
        self.cancelled = 0

    async def __call__(self, body: dict[str, Any], request_id: str) -> tuple[int, dict[str, Any]]:
        prompt = body["messages"][0]["content"]
        self.seen.append(prompt)
        if self.hang and prompt != "a":
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
        return 200, {"object": "chat.completion", "usage": {"prompt_tokens": 1, "completion_tokens": 1}}


@asynccontextmanager
async def running(store: Store, engine: Engine) -> AsyncIterator[Metrics]:
    metrics = Metrics()
    metrics.enable_batches()
    task = asyncio.create_task(BatchWorker(store, engine, metrics, max_inflight=2).run())
    try:
        yield metrics
    finally:
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task


async def ended(store: Store, batch_id: str) -> StoredBatch:
    deadline = time.monotonic() + 10
    while True:
        found = store.batch(batch_id)
        assert found is not None
        if found.status in ("completed", "failed", "expired", "cancelled"):
            return found
        assert time.monotonic() < deadline, f"batch still {found.status}"
        await asyncio.sleep(0.01)


def records(store: Store, file_id: str | None) -> list[dict[str, Any]]:
    return [] if file_id is None else [json.loads(raw) for raw in store.path(file_id).read_text().splitlines()]


async def test_a_batch_found_in_progress_resumes_without_redoing_its_answered_lines(tmp_path: Path) -> None:
    store = Store(tmp_path)
    batch = add(store, "\n".join(line(c) for c in ("a", "b", "c")) + "\n", status="in_progress")
    store.set_status(batch.id, "in_progress", 0, total=3)
    done_a = {"id": "batch_req_1", "custom_id": "a", "response": {"status_code": 200}, "error": None}
    # What a killed gateway left: one answered line, and half of the next one.
    store.path(batch.output_draft).write_text(json.dumps(done_a) + '\n{"id": "batch_req_2", "custom_id": "b", "resp')
    engine = Engine()
    async with running(store, engine) as metrics:
        finished = await ended(store, batch.id)
    assert finished.status == "completed" and (finished.total, finished.completed, finished.failed) == (3, 3, 0)
    assert sorted(engine.seen) == ["b", "c"]
    output = records(store, finished.output_file_id)
    assert output[0] == done_a and sorted(r["custom_id"] for r in output) == ["a", "b", "c"]  # the torn line redone
    assert metrics.registry.get_sample_value("moa_batches", {"status": "completed"}) == 1
    store.close()


async def test_an_expired_batch_reports_every_line_it_did_not_run(tmp_path: Path) -> None:
    store = Store(tmp_path)
    batch = add(store, line("a") + "\n{broken\n" + line("c") + "\n", expires_in_s=-1)
    engine = Engine()
    async with running(store, engine):
        finished = await ended(store, batch.id)
    assert finished.status == "expired" and finished.times["expired_at"] is not None
    assert (finished.completed, finished.failed) == (0, 3) and finished.output_file_id is None
    errors = {r["error"]["message"].split(":")[0]: r["error"]["code"] for r in records(store, finished.error_file_id)}
    assert errors == {"line 1": "batch_expired", "line 2": "invalid_json", "line 3": "batch_expired"}
    assert engine.seen == []
    store.close()


async def test_a_batch_running_past_its_window_expires_and_its_calls_are_cancelled(tmp_path: Path) -> None:
    store = Store(tmp_path)
    batch = add(store, "".join(line(c) + "\n" for c in ("a", "b", "c", "d")), expires_in_s=1)
    engine = Engine(hang=True)  # "a" is answered, the others never are
    async with running(store, engine):
        finished = await ended(store, batch.id)
    assert finished.status == "expired" and (finished.completed, finished.failed) == (1, 3)
    assert [r["custom_id"] for r in records(store, finished.output_file_id)] == ["a"]
    expired = records(store, finished.error_file_id)
    assert sorted(r["custom_id"] for r in expired) == ["b", "c", "d"]
    assert {r["error"]["code"] for r in expired} == {"batch_expired"}
    assert engine.cancelled == 2  # max_inflight 2: the two hanging calls in flight were cancelled
    store.close()


async def test_an_unreadable_input_fails_the_batch_naming_the_file_not_the_folder(tmp_path: Path) -> None:
    store = Store(tmp_path)
    empty = add(store, "\n\n")
    gone = add(store, line("a") + "\n")
    store.path(gone.input_file_id).unlink()
    async with running(store, Engine()):
        failed = [await ended(store, empty.id), await ended(store, gone.id)]
    for batch in failed:
        assert batch.status == "failed" and batch.errors is not None and batch.times["failed_at"] is not None
        (error,) = batch.errors
        assert error["code"] == "invalid_input_file" and error["param"] == "input_file_id"
        assert error["message"].startswith(batch.input_file_id) and str(tmp_path) not in error["message"]
    store.close()
