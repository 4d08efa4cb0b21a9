"""SIGTERM stops a long async command the way Ctrl-C does: cancelled, files whole, resume line printed.

`asyncio.run` already turns Ctrl-C into a cancellation of the main task
and then a `KeyboardInterrupt`, which `batch` and `eval` catch to print
how to resume. SIGTERM (a scheduler's stop, `kill`, a CI timeout) would
otherwise kill the process on the spot: the files stay whole (lines are
written whole and a torn last line is dropped on open) but the requests in
flight are not cancelled and nothing says how to resume. `run` gives
SIGTERM the same path: the main task is cancelled, its clean-up runs, and
`Interrupted(SIGTERM)`, a `KeyboardInterrupt`, comes out.

A SIGTERM that was ignored before stays ignored; off the main thread
(where no handler can be installed) SIGTERM keeps its default action.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Coroutine
from typing import Any, TypeVar

from moa_local.deploy.interruption import Interrupted

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(main)`, with SIGTERM cancelling it as Ctrl-C does."""
    terminated: list[bool] = []
    try:
        return asyncio.run(_terminable(main, terminated))
    except asyncio.CancelledError:
        if terminated:
            raise Interrupted(signal.SIGTERM) from None
        raise


def exit_code(exc: KeyboardInterrupt) -> int:
    """The shell's code for the signal that stopped the command: 130 for Ctrl-C, 143 for SIGTERM."""
    return 128 + (exc.signum if isinstance(exc, Interrupted) else signal.SIGINT)


async def _terminable(main: Coroutine[Any, Any, T], terminated: list[bool]) -> T:
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()

    def terminate() -> None:
        terminated.append(True)
        if task is not None:
            task.cancel()

    handled = signal.getsignal(signal.SIGTERM) is not signal.SIG_IGN
    if handled:
        try:
            loop.add_signal_handler(signal.SIGTERM, terminate)
        except (RuntimeError, ValueError):  # not the main thread: SIGTERM keeps its default action
            handled = False
    try:
        return await main
    finally:
        if handled:
            loop.remove_signal_handler(signal.SIGTERM)
