"""A deadline over one wait of the pipeline that says why before it cancels.

`asyncio.timeout` cancels the waiting task first and lets the code after
it know only then. An engine call cancelled that way has already recorded
itself by then (the endpoint counts each call in its `finally`, which runs
as the cancellation unwinds it), as `cancelled`. `Cutoff` calls `expire()`
at the deadline before it cancels anything, so the call's trace can be
marked first (`timeout`) and its record says so; `expire` may instead
return a later deadline to wait until. Like `asyncio.timeout`, it raises
TimeoutError out of the block when it cut the wait off, and lets any other
cancellation through.

`AggregatorCap` is the request's cap on each wait for an aggregator token,
with what a cut-off says; `capped_texts` reads an aggregator call under it
(the pipeline's one call, and each staircase step's).

Left out on purpose: nesting and rescheduling from inside the block
(the pipeline needs neither).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from types import TracebackType

from moa_local.errors import DeadlineError
from moa_local.mixture.spec import RunSpec
from moa_local.mixture.trace import AgentTrace


class Cutoff:
    """`with Cutoff(when, expire): await ...`; `when` is a `time.perf_counter()` time."""

    def __init__(self, when: float, expire: Callable[[], float | None]) -> None:
        self.when = when
        self._expire = expire
        self._task: asyncio.Task[object] | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._cancelling = 0
        self.expired = False

    def __enter__(self) -> Cutoff:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("Cutoff must be used inside a task")
        self._task = task
        self._cancelling = task.cancelling()
        self._arm()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        # Ours was the cancellation unless another is still pending (as asyncio.timeout decides);
        # `uncancel` must run whenever we cancelled, whatever left the block.
        expired = self.expired and self._task is not None and self._task.uncancel() <= self._cancelling
        if expired and exc_type is asyncio.CancelledError:
            raise TimeoutError from exc

    def _arm(self) -> None:
        loop = asyncio.get_running_loop()
        self._handle = loop.call_at(loop.time() + (self.when - time.perf_counter()), self._fire)

    def _fire(self) -> None:
        later = self._expire()
        if later is not None:
            self.when = later
            self._arm()
            return
        self._handle = None
        self.expired = True
        assert self._task is not None
        self._task.cancel()


class AggregatorCap:
    """When the wait for the aggregator's next token is cut off (`at`, a perf_counter time).

    A mixture's: the request's cap. A pass-through's: the same while its
    call waits for a slot; once the call is admitted, the call's own
    timeout ends it, so at the cap the cap moves `admitted_cap_s` on (from
    no earlier than the admission). Cutting off marks the call's trace
    first: it is then cancelled, and the endpoint records it as it unwinds.
    """

    def __init__(self, spec: RunSpec, trace: AgentTrace, at: float) -> None:
        self.at = at
        self._spec = spec
        self._trace = trace
        self._moved = False

    def expire(self) -> float | None:
        """At the cap: a later cap to wait until instead, or None (cut off; the trace is marked)."""
        later = self._spec.admitted_cap_s
        if later is not None and not self._moved and self._trace.attempts > 0:
            self._moved = True
            self.at = time.perf_counter() + later
            return self.at
        mark_cut_off(self._spec, self._trace)
        return None


async def capped_texts(
    tokens: AsyncIterator[tuple[int, str]], spec: RunSpec, trace: AgentTrace, deadline: float
) -> AsyncGenerator[str, None]:
    """The texts of an aggregator call, each wait for the next one cut off at the request's cap (DeadlineError).

    The timer spans the wait only, never the `yield`: a timeout around a
    yield of an async generator would cancel its consumer instead.
    """
    cap = AggregatorCap(spec, trace, deadline)
    while True:
        try:
            with Cutoff(cap.at, cap.expire):
                _, text = await anext(tokens)
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise cut_off(spec, trace) from None
        yield text
        if time.perf_counter() > cap.at and cap.expire() is None:
            raise cut_off(spec, trace)


def mark_cut_off(spec: RunSpec, aggregator: AgentTrace) -> None:
    """The request's deadline ended the aggregator: its call counts as a timeout, not a cancellation."""
    aggregator.status = "timeout"
    aggregator.error = f"cut off by the {spec.timeout_s:g}s request deadline"


def cut_off(spec: RunSpec, aggregator: AgentTrace) -> DeadlineError:
    mark_cut_off(spec, aggregator)
    return DeadlineError(f"{spec.model}: no complete answer within {spec.timeout_s:g}s")
