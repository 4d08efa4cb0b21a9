"""SIGINT and SIGTERM during `up`: both become one exception, at moments `up` chooses.

`interruptible()` makes SIGTERM (and SIGINT, as Python already does) raise
`Interrupted`, a `KeyboardInterrupt`, for the duration of a block, so a
terminated `up` runs the same clean-up as Ctrl-C instead of dying with its
engines still starting. Inside it, `Interruptions.held()` marks a step that
must not be split (spawning an engine and recording it): a signal that
arrives then is raised when the step is done. A clean-up that runs held can
ask `pending()` to treat a second Ctrl-C as "hurry up" instead of an
exception that would cut it short, and `discard()` it once acted on.

Holding is done in the handler, not with the signal mask: Python runs
handlers in the main thread only, at a point between two bytecodes, so this
holds whichever thread the kernel delivered the signal to.

Left out: other signals (SIGHUP, SIGQUIT keep their default actions) and
calls from threads other than the main one (handlers cannot be installed
there; `interruptible()` then changes nothing and `held()` holds nothing).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """A SIGINT or SIGTERM arrived; `signum` says which."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.signum = signum


class Interruptions:
    """The SIGINT/SIGTERM handler of one `up`, and what it holds back."""

    def __init__(self) -> None:
        self._holding = 0
        self._held: int | None = None

    def handle(self, signum: int, _frame: FrameType | None) -> None:
        if self._holding:
            self._held = signum  # the last one wins: either means "stop"
            return
        raise Interrupted(signum)

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Hold SIGINT and SIGTERM back during the block; one that arrived is raised right after it."""
        self._holding += 1
        try:
            yield
        finally:
            self._holding -= 1
            if not self._holding and self._held is not None:
                signum, self._held = self._held, None
                raise Interrupted(signum)

    def pending(self) -> bool:
        """Has a SIGINT or SIGTERM arrived while held?"""
        return self._held is not None

    def discard(self) -> None:
        """Forget the held signal: it has been acted on."""
        self._held = None


@contextlib.contextmanager
def interruptible() -> Iterator[Interruptions]:
    """SIGINT and SIGTERM raise `Interrupted` inside the block (unless they were ignored before)."""
    interruptions = Interruptions()
    if threading.current_thread() is not threading.main_thread():
        yield interruptions
        return
    previous = {sig: signal.getsignal(sig) for sig in SIGNALS}
    for sig, handler in previous.items():
        if handler is not signal.SIG_IGN:
            signal.signal(sig, interruptions.handle)
    try:
        yield interruptions
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
