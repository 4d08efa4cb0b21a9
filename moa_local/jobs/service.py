"""The gateway's batch side as one object: the store, opened when first needed, and the worker over it.

A gateway that never sees a batch writes nothing to disk: the store opens
on the first files or batches request, or at `start` when the data_dir
already holds a database (the worker then resumes the unfinished batches at
once: a gateway killed mid-batch goes on where it stopped; a data_dir it
cannot use is logged, and the batch routes answer with the reason). `stop` stops
the worker (calls in flight are cancelled; their batch resumes on the next
start) and closes the store. Left out: HTTP (`api/`), the steps of a batch
(`worker.py`).
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import suppress
from pathlib import Path

from moa_local.jobs.runner import Execute
from moa_local.jobs.store import DATABASE, Store, StoreError
from moa_local.jobs.worker import BatchWorker
from moa_local.metrics import Metrics

logger = logging.getLogger("moa_local.batch")


class BatchService:
    def __init__(self, data_dir: Path, metrics: Metrics, *, max_inflight: int) -> None:
        self.data_dir = data_dir
        self.metrics = metrics
        self.max_inflight = max_inflight
        self._execute: Execute | None = None
        self._store: Store | None = None
        self._worker: BatchWorker | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self, execute: Execute) -> None:
        """Take the executor for batch lines; open the store now if it has something to resume."""
        self._execute = execute
        if (self.data_dir / DATABASE).exists():
            try:
                self.open()
            except StoreError as exc:  # chat goes on; the batch routes answer with this reason
                logger.error("batch jobs unavailable: %s", exc)

    def open(self) -> tuple[Store, BatchWorker]:
        """The store and its worker, opened (and the worker started) on first use; StoreError if unusable."""
        if self._store is None or self._worker is None:
            assert self._execute is not None, "the app's lifespan has not run"
            store = Store(self.data_dir)
            self._store, self._worker = store, BatchWorker(
                store, self._execute, self.metrics, max_inflight=self.max_inflight
            )
            self._task = asyncio.create_task(self._worker.run(), name="batch-worker")
            self._task.add_done_callback(_report_end)
        return self._store, self._worker

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task
        if self._store is not None:
            self._store.close()
        self._store = self._worker = self._task = None


def _report_end(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("the batch worker stopped: batches wait until the gateway restarts", exc_info=task.exception())
