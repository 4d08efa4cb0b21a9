"""Admission to an endpoint: at most `limit` calls in flight, interactive calls first, the oldest request's first.

A plain semaphore admits waiting calls in the order they arrived. Under
load that interleaves requests: a new request's proposals queue ahead of
an older request's aggregation on the same engine, so every request
finishes late and more of them are in flight at once. `Admission` orders
the waiting calls by their request's start instead (ties in arrival
order), so a request that has reached its aggregator is not held behind
requests that have only begun. With no one waiting a slot is taken at
once; a freed slot passes straight to the next waiter.

Calls come in two priority classes. A waiting interactive call is always
admitted before a waiting batch call, whatever their requests' ages, and
batch calls hold at most `batch_limit` slots (`batch_share` of the limit,
at least one), so a batch job never fills an endpoint: the rest is kept
for interactive requests that arrive while it runs. A batch call waits
while the batch slots are full even if other slots are free.

Left out on purpose: ageing or fairness between clients (the order is the
requests' own; the gateway's `max_inflight` bounds what can wait here), and
pre-empting batch calls already running (an engine call is not paused).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from moa_local.mixture.spec import Priority

_Waiter = tuple[float, int, asyncio.Future[None]]


class Admission:
    def __init__(self, limit: int, batch_share: float = 1.0) -> None:
        if limit < 1:
            raise ValueError(f"an admission limit must be at least 1, not {limit}")
        if not 0 < batch_share <= 1:
            raise ValueError(f"a batch share must be in (0, 1], not {batch_share}")
        self.limit = limit
        self.batch_limit = max(1, math.floor(limit * batch_share))
        self._free = limit
        self._batch_in_use = 0
        self._waiting: dict[Priority, list[_Waiter]] = {"interactive": [], "batch": []}
        self._arrivals = itertools.count()

    @property
    def in_use(self) -> int:
        return self.limit - self._free

    @property
    def batch_in_use(self) -> int:
        return self._batch_in_use

    @property
    def queued(self) -> int:
        return self.queued_of("interactive") + self.queued_of("batch")

    def queued_of(self, priority: Priority) -> int:
        return sum(1 for _, _, future in self._waiting[priority] if not future.done())

    @asynccontextmanager
    async def slot(self, order: float, priority: Priority = "interactive") -> AsyncIterator[None]:
        """Hold one slot for the block; interactive before batch, then a lower `order` (older request) first."""
        if self._can_take(priority):
            self._take(priority)
        else:
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            heapq.heappush(self._waiting[priority], (order, next(self._arrivals), future))
            try:
                await future  # the slot is taken on our behalf when the future is granted
            except asyncio.CancelledError:
                if future.done() and not future.cancelled():  # granted, then cancelled before it ran
                    self._release(priority)
                raise  # a cancelled future still in the heap is skipped when a slot frees
        try:
            yield
        finally:
            self._release(priority)

    def _can_take(self, priority: Priority) -> bool:
        # No one of the class waits when this holds: a release hands every slot it may take to its waiters first.
        return self._free > 0 and (priority == "interactive" or self._batch_in_use < self.batch_limit)

    def _take(self, priority: Priority) -> None:
        self._free -= 1
        if priority == "batch":
            self._batch_in_use += 1

    def _release(self, priority: Priority) -> None:
        self._free += 1
        if priority == "batch":
            self._batch_in_use -= 1
        while self._free and (self._grant("interactive") or self._grant("batch")):
            pass

    def _grant(self, priority: Priority) -> bool:
        """Pass a free slot to the first live waiter of the class, if the class may take one."""
        if priority == "batch" and self._batch_in_use >= self.batch_limit:
            return False
        waiting = self._waiting[priority]
        while waiting:
            _, _, future = heapq.heappop(waiting)
            if not future.done():
                self._take(priority)
                future.set_result(None)
                return True
        return False
