"""The pipeline's cut-off timer: it says why before it cancels, and otherwise acts as asyncio.timeout."""

from __future__ import annotations

import asyncio
import time

import pytest

from moa_local.mixture.cutoff import Cutoff


async def test_expire_runs_before_the_waiting_code_sees_the_cancellation() -> None:
    marks: list[str] = []
    seen: list[list[str]] = []

    async def wait() -> None:
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            seen.append(list(marks))  # what a call's `finally` would record
            raise

    def expire() -> None:
        marks.append("timeout")

    with pytest.raises(TimeoutError), Cutoff(time.perf_counter() + 0.05, expire) as cutoff:
        await wait()
    assert seen == [["timeout"]] and cutoff.expired
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


async def test_expire_may_move_the_deadline() -> None:
    fired: list[float] = []

    def expire() -> float | None:
        fired.append(time.perf_counter())
        return time.perf_counter() + 0.05 if len(fired) == 1 else None

    with pytest.raises(TimeoutError), Cutoff(time.perf_counter() + 0.05, expire):
        await asyncio.sleep(5)
    assert len(fired) == 2 and fired[1] > fired[0]


async def test_a_wait_that_ends_in_time_is_left_alone() -> None:
    def expire() -> None:
        raise AssertionError("must not fire")

    with Cutoff(time.perf_counter() + 5, expire) as cutoff:
        await asyncio.sleep(0)
    assert not cutoff.expired


async def test_someone_elses_cancellation_passes_through() -> None:
    async def wait() -> None:
        with Cutoff(time.perf_counter() + 5, lambda: None):
            await asyncio.sleep(5)

    task = asyncio.create_task(wait())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
