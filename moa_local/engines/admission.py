"""Admission to an endpoint: at most `limit` calls in flight, the oldest request's call first.

A plain semaphore admits waiting calls in the order they arrived. Under
load that interleaves requests: a new request's proposals queue ahead of
an older request's aggregation on the same engine, so every request
finishes late and more of them are in flight at once. `Admission` orders
the waiting calls by their request's start instead (ties in arrival
order), so a request that has reached its aggregator is not held behind
requests that have only begun. With no one waiting a slot is taken at
once; a freed slot passes straight to the next waiter.

Left out on purpose: ageing or fairness between clients (the order is the
requests' own; the gateway's `max_inflight` bounds what can wait here).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class Admission:
    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"an admission limit must be at least 1, not {limit}")
        self.limit = limit
        self._free = limit
        self._waiting: list[tuple[float, int, asyncio.Future[None]]] = []
        self._arrivals = itertools.count()

    @property
    def in_use(self) -> int:
        return self.limit - self._free

    @property
    def queued(self) -> int:
        return sum(1 for _, _, future in self._waiting if not future.done())

    @asynccontextmanager
    async def slot(self, order: float) -> AsyncIterator[None]:
        """Hold one slot for the block; a lower `order` (an older request) is admitted first."""
        if self._free > 0:  # free slots mean no one waits: a release hands its slot to a waiter first
            self._free -= 1
        else:
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            heapq.heappush(self._waiting, (order, next(self._arrivals), future))
            try:
                await future
            except asyncio.CancelledError:
                if future.done() and not future.cancelled():  # granted, then cancelled before it ran
                    self._release()
                raise  # a cancelled future still in the heap is skipped when a slot frees
        try:
            yield
        finally:
            self._release()

    def _release(self) -> None:
        while self._waiting:
            _, _, future = heapq.heappop(self._waiting)
            if not future.done():
                future.set_result(None)  # the slot passes to it directly
                return
        self._free += 1
