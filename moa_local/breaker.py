"""A per-endpoint circuit breaker.

After `failures` consecutive failed calls the circuit opens: calls are
skipped for `cooldown_s`. Then one call is let through as a probe; its
success closes the circuit, its failure opens it for another cool-down.
Time comes from a function passed in, so tests need no sleeping.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class CircuitBreaker:
    def __init__(self, failures: int, cooldown_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.threshold = failures
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._consecutive = 0
        self._open_until: float | None = None
        self._probing = False

    @property
    def is_open(self) -> bool:
        return self._open_until is not None

    def allow(self) -> bool:
        """May a call go out now? Half-open lets exactly one probe through."""
        if self._open_until is None:
            return True
        if self._probing or self._clock() < self._open_until:
            return False
        self._probing = True
        return True

    def retry_in_s(self) -> float:
        if self._open_until is None:
            return 0.0
        return max(0.0, self._open_until - self._clock())

    def record_success(self) -> None:
        self._consecutive = 0
        self._open_until = None
        self._probing = False

    def record_failure(self) -> None:
        self._consecutive += 1
        if self._probing or self._consecutive >= self.threshold:
            self._open_until = self._clock() + self.cooldown_s
        self._probing = False

    def release_probe(self) -> None:
        """A probe that ended without a verdict (cancelled) frees the slot."""
        self._probing = False
