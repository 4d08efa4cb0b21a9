"""The batch runner: every line of a batch through an executor, results appended as they come, resumable.

    runner = BatchRunner(execute, ResultFile(out), ResultFile(errors), max_inflight=64, on_progress=show)
    progress = await runner.run(read_input(path), total=check_input(path))

`execute(body, request_id) -> (status, body)` answers one request body:
the `chat.completion` object on 200, the OpenAI error envelope otherwise
(the CLI and the gateway pass `api/completion.complete`, priority batch).
It must not raise but for cancellation; anything else it raises is logged
and the line fails with `internal_error`. At most `max_inflight` requests
run at once, started in input order, each written the moment it finishes:
an answer to the output file, a failed request or a bad line
(`LineFailure`) to the error file (see `format.py` for both shapes).

Resume: `run` first reads both files back (`ResultFile.recover`, which
drops a torn last line) and skips every item whose custom_id is already
in either, and every bad line already reported, so a rerun after a crash
or Ctrl-C does the rest and nothing twice. Cancelling `run` cancels the
requests in flight (which closes their upstream calls), leaves both files
holding complete lines only, fsync'ed, and re-raises; `progress()` still
tells what was done. Progress goes to `on_progress` every
`progress_every_s` while running: counts, lines/s, generated tokens/s
(from each answer's `usage`), ETA, and engine time per endpoint (from the
`moa` trace when an answer carries one, or as handed to `add_trace`).
`moa_batch_requests_total{outcome}` counts each line when `metrics` is given
(ok; error for a 5xx; rejected for a bad line or a 4xx).

Left out on purpose: rendering (the CLI's), the file format (`format.py`),
durable job state beyond the two files (the gateway's store), and retries
of failed lines (a failed line is an answer; remove it to run it again).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from moa_local.jobs.format import BatchItem, LineFailure, error_record, ok_record, request_failure, resume_keys
from moa_local.jobs.result_file import ResultFile
from moa_local.metrics import Metrics

logger = logging.getLogger("moa_local.batch")

Execute = Callable[[dict[str, Any], str], Awaitable[tuple[int, dict[str, Any]]]]


@dataclass(frozen=True)
class Progress:
    """Where a run stands. Counts are this run's, but `already` (lines an earlier run answered)."""

    total: int | None  # request lines in the input, if known
    already: int
    ok: int
    failed: int  # requests that ran and got an error answer
    invalid: int  # lines refused before running
    inflight: int
    elapsed_s: float
    prompt_tokens: int
    completion_tokens: int
    engine_s: dict[str, float] = field(default_factory=dict)  # engine call time per endpoint

    @property
    def errors(self) -> int:
        return self.failed + self.invalid

    @property
    def finished(self) -> int:
        return self.ok + self.errors

    @property
    def lines_per_s(self) -> float:
        return self.finished / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.completion_tokens / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def remaining(self) -> int | None:
        return None if self.total is None else max(0, self.total - self.already - self.finished)

    @property
    def eta_s(self) -> float | None:
        rate, remaining = self.lines_per_s, self.remaining
        return None if remaining is None or rate <= 0 else remaining / rate


class BatchRunner:
    def __init__(
        self,
        execute: Execute,
        output: ResultFile,
        errors: ResultFile,
        *,
        max_inflight: int = 64,
        on_progress: Callable[[Progress], None] | None = None,
        progress_every_s: float = 0.5,
        metrics: Metrics | None = None,
    ) -> None:
        if max_inflight < 1:
            raise ValueError(f"max_inflight must be at least 1, not {max_inflight}")
        self.execute = execute
        self.output = output
        self.errors = errors
        self.max_inflight = max_inflight
        self.on_progress = on_progress
        self.progress_every_s = progress_every_s
        self.metrics = metrics
        if metrics is not None:
            metrics.enable_batches()
        self._done_ids: set[str] = set()
        self._done_lines: set[int] = set()
        self._total: int | None = None
        self._counts = dict.fromkeys(("already", "ok", "failed", "invalid", "prompt", "completion"), 0)
        self._engine_s: dict[str, float] = {}
        self._inflight = 0
        self._start: float | None = None
        self._end: float | None = None

    def progress(self) -> Progress:
        start = self._start if self._start is not None else time.perf_counter()
        end = self._end if self._end is not None else time.perf_counter()
        c = self._counts
        return Progress(
            self._total, c["already"], c["ok"], c["failed"], c["invalid"], self._inflight, end - start,
            c["prompt"], c["completion"], dict(self._engine_s),
        )  # fmt: skip

    def add_trace(self, trace: Mapping[str, Any]) -> None:
        """Add the engine time of one request's trace (the `moa` object) to the endpoints' totals."""
        agents = [agent for layer in trace.get("layers") or () for agent in layer.get("agents") or ()]
        if trace.get("aggregator"):
            agents.append(trace["aggregator"])
        for agent in agents:
            if agent.get("status") != "skipped":
                endpoint = str(agent.get("endpoint"))
                self._engine_s[endpoint] = self._engine_s.get(endpoint, 0.0) + float(agent.get("latency_s") or 0.0)

    async def run(self, lines: Iterable[BatchItem | LineFailure], total: int | None = None) -> Progress:
        """Run every line not already answered; the final progress. Cancelling it stops cleanly."""
        self._total = total
        self.output.recover(self._remember)
        self.errors.recover(self._remember)
        self._start, self._end = time.perf_counter(), None
        ticker = asyncio.create_task(self._tick()) if self.on_progress is not None else None
        tasks: set[asyncio.Task[None]] = set()
        try:
            for line in lines:
                if isinstance(line, LineFailure):
                    self._refuse(line)
                elif line.custom_id in self._done_ids:
                    self._counts["already"] += 1
                else:
                    while len(tasks) >= self.max_inflight:
                        done, tasks = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                        _raise_any(done)
                    tasks.add(asyncio.create_task(self._one(line)))
            while tasks:
                done, tasks = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                _raise_any(done)
        finally:
            for task in tasks:
                task.cancel()  # closes each request's upstream calls
            if ticker is not None:
                ticker.cancel()
                tasks.add(ticker)
            if tasks:
                await asyncio.wait(tasks)
            self._end = time.perf_counter()
            self.output.close()
            self.errors.close()
        return self.progress()

    def _remember(self, record: dict[str, Any]) -> None:
        custom_id, line_no = resume_keys(record)
        if custom_id is not None:
            self._done_ids.add(custom_id)
        if line_no is not None:
            self._done_lines.add(line_no)

    def _refuse(self, failure: LineFailure) -> None:
        if failure.line_no in self._done_lines:
            self._counts["already"] += 1
            return
        self.errors.append(error_record(failure))
        self._count("invalid", "rejected")

    async def _one(self, item: BatchItem) -> None:
        request_id = uuid.uuid4().hex
        self._inflight += 1
        try:
            status, body = await self.execute(item.body, request_id)
        except Exception as exc:  # the executor's contract is to answer; a bug fails this line only
            logger.exception("batch line %d (request %s) failed with an internal error", item.line_no, request_id)
            message = f"internal error in moa-local ({type(exc).__name__}); see the log"
            status, body = 500, {"error": {"message": message, "type": "server_error", "param": None,
                                           "code": "internal_error"}}  # fmt: skip
        finally:
            self._inflight -= 1
        # No await from here on: a finished request is written whole, or (cancelled before) not at all.
        if status == 200:
            self.output.append(ok_record(item.custom_id, request_id, body))
            usage = body.get("usage") or {}
            self._counts["prompt"] += int(usage.get("prompt_tokens") or 0)
            self._counts["completion"] += int(usage.get("completion_tokens") or 0)
            if isinstance(body.get("moa"), Mapping):
                self.add_trace(body["moa"])
            self._count("ok", "ok")
        else:
            failure = request_failure(item, status, body)
            self.errors.append(error_record(failure, (status, request_id, body)))
            self._count("failed", "rejected" if status < 500 else "error")

    def _count(self, kind: str, outcome: str) -> None:
        self._counts[kind] += 1
        if self.metrics is not None:
            self.metrics.batch_requests.labels(outcome).inc()

    async def _tick(self) -> None:
        assert self.on_progress is not None
        while True:
            await asyncio.sleep(self.progress_every_s)
            self.on_progress(self.progress())


def _raise_any(done: set[asyncio.Task[None]]) -> None:
    """A finished line whose result could not be written (the disk is full, say) stops the job."""
    for task in done:
        task.result()
