"""The gateway's batch worker: takes each unfinished batch in the store, oldest first, to its end.

    validating   the input file is checked as a whole (`format.check_input`:
                 JSONL, not empty); a file that fails ends the batch `failed`
                 with the reason in its `errors`
    in_progress  the `BatchRunner` runs every line not answered yet through
                 the injected executor (the gateway's `complete`, priority
                 batch), appending to the batch's draft output and error
                 files; the counts reach the store at every progress tick
    finalizing   the drafts are published as files: `completed`
    cancelling   the runner is stopped (its calls in flight are cancelled):
                 `cancelled`, with what was done
    expired      past `expires_at`, as cancelling, and every line not run
                 gets a `batch_expired` error record, as OpenAI does

A gateway killed at any point finds the batch in one of these statuses
when it starts again and goes on: the runner skips every line its files
already answer, so nothing is run twice or lost. One batch runs at a time;
its lines run concurrently, and each endpoint's admission keeps them behind
interactive calls. A batch that breaks the worker itself (a disk error, a
bug) ends `failed` with the reason, and the worker goes on to the next.
Left out: HTTP (`api/batches.py`), SQL (`store.py`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

from moa_local.errors import BatchInputError
from moa_local.jobs.format import LineFailure, check_input, error_record, read_input, resume_keys
from moa_local.jobs.records import STATUSES, StoredBatch
from moa_local.jobs.result_file import ResultFile
from moa_local.jobs.runner import BatchRunner, Execute, Progress
from moa_local.jobs.store import Store
from moa_local.metrics import Metrics

logger = logging.getLogger("moa_local.batch")

PROGRESS_EVERY_S = 0.2  # how often a running batch's counts reach the store
ENDS = {"finalizing": "completed", "cancelling": "cancelled"}


class BatchWorker:
    def __init__(self, store: Store, execute: Execute, metrics: Metrics, *, max_inflight: int) -> None:
        self.store = store
        self.execute = execute
        self.metrics = metrics
        self.max_inflight = max_inflight
        self._wake = asyncio.Event()
        self._running: tuple[str, asyncio.Task[Progress]] | None = None

    def wake(self) -> None:
        """Look at the store again (a batch was created or cancelled)."""
        self._wake.set()

    def cancel(self, batch_id: str) -> None:
        """Stop the batch's lines if it is the one running; the store already says `cancelling`."""
        if self._running is not None and self._running[0] == batch_id:
            self._running[1].cancel()
        self.wake()

    def count_statuses(self) -> None:
        counts = self.store.status_counts()
        for status in STATUSES:
            self.metrics.batches.labels(status).set(counts.get(status, 0))

    async def run(self) -> None:
        """Forever: the oldest unfinished batch to its end, then the next; waits while there is none."""
        self.count_statuses()
        while True:
            self._wake.clear()
            batch = self.store.next_active()
            if batch is None:
                await self._wake.wait()
                continue
            try:
                await self._advance(batch)
            except Exception as exc:  # the batch fails with the reason; the worker keeps serving the others
                logger.exception("batch %s failed in the worker", batch.id)
                error = {"code": "internal_error", "message": f"moa-local could not run the batch: {exc}",
                         "param": None, "line": None}  # fmt: skip
                self.store.set_status(batch.id, "failed", _now(), errors=[error])
            self.count_statuses()

    async def _advance(self, batch: StoredBatch) -> None:
        if batch.status == "validating":
            batch = await self._validate(batch)
            self.count_statuses()
        if batch.status == "in_progress":
            batch = await self._run_lines(batch)
            self.count_statuses()
        if batch.status in ENDS:
            await self._finish(batch, ENDS[batch.status])

    async def _validate(self, batch: StoredBatch) -> StoredBatch:
        path = self.store.path(batch.input_file_id)
        try:
            total = await asyncio.to_thread(check_input, path)
        except BatchInputError as exc:
            message = str(exc).replace(str(path), batch.input_file_id)  # the file's id, not our folder
            error = {"code": "invalid_input_file", "message": message, "param": "input_file_id", "line": None}
            return self.store.set_status(batch.id, "failed", _now(), only_from=("validating",), errors=[error])
        return self.store.set_status(batch.id, "in_progress", _now(), only_from=("validating",), total=total)

    async def _run_lines(self, batch: StoredBatch) -> StoredBatch:
        if batch.expires_at <= time.time():  # the gateway was down past the batch's window
            return await self._expire(batch)
        out, err = self.store.path(batch.output_draft), self.store.path(batch.error_draft)
        done_ok, done_failed = await asyncio.to_thread(_tally, out, err)

        def report(progress: Progress) -> None:
            self.store.set_counts(batch.id, done_ok + progress.ok, done_failed + progress.errors)

        runner = BatchRunner(
            self.execute, ResultFile(out), ResultFile(err), max_inflight=self.max_inflight, on_progress=report,
            progress_every_s=PROGRESS_EVERY_S, metrics=self.metrics,
        )  # fmt: skip
        job = asyncio.create_task(runner.run(read_input(self.store.path(batch.input_file_id)), total=batch.total))
        self._running = (batch.id, job)
        deadline = asyncio.get_running_loop().time() + (batch.expires_at - time.time())
        try:
            async with asyncio.timeout_at(deadline):
                await job
        except TimeoutError:
            return await self._expire(batch)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                report(runner.progress())
                raise  # the worker itself is stopping (the gateway shuts down): resumed on the next start
        finally:
            self._running = None
        report(runner.progress())
        return self.store.set_status(batch.id, "finalizing", _now(), only_from=("in_progress",))

    async def _expire(self, batch: StoredBatch) -> StoredBatch:
        source = self.store.path(batch.input_file_id)
        out, err = self.store.path(batch.output_draft), self.store.path(batch.error_draft)
        await asyncio.to_thread(_expire_rest, source, out, err)
        return await self._finish(batch, "expired")

    async def _finish(self, batch: StoredBatch, status: str) -> StoredBatch:
        out, err = self.store.path(batch.output_draft), self.store.path(batch.error_draft)
        counts = await asyncio.to_thread(_tally, out, err)
        return self.store.finish(batch, status, _now(), counts)


def _tally(output: Path, errors: Path) -> tuple[int, int]:
    """Records in the output and the error file (a torn last line, from a crash, is cut off first)."""
    return ResultFile(output).recover(_ignore), ResultFile(errors).recover(_ignore)


def _ignore(record: dict[str, Any]) -> None:
    pass


def _expire_rest(source: Path, output: Path, errors: Path) -> None:
    """Write a `batch_expired` error record for every line of `source` that neither result file accounts for."""
    done_ids: set[str] = set()
    done_lines: set[int] = set()

    def remember(record: dict[str, Any]) -> None:
        custom_id, line_no = resume_keys(record)
        if custom_id is not None:
            done_ids.add(custom_id)
        if line_no is not None:
            done_lines.add(line_no)

    ResultFile(output).recover(remember)
    sink = ResultFile(errors)
    sink.recover(remember)
    try:
        for line in read_input(source):
            if isinstance(line, LineFailure):
                if line.line_no not in done_lines:
                    sink.append(error_record(line))
            elif line.custom_id not in done_ids:
                message = f"line {line.line_no}: the batch expired before this request ran"
                sink.append(error_record(LineFailure(line.line_no, line.custom_id, "batch_expired", message)))
    finally:
        sink.close()


def _now() -> int:
    return int(time.time())
