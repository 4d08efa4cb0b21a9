"""A per-endpoint circuit breaker.

After `failures` consecutive failed calls the circuit opens: calls are
skipped for `cooldown_s`. Then one call is let through as a probe; its
success closes the circuit, its failure opens it for another cool-down.
`allow()` hands each call a `Permit` that says whether it is the probe,
and of which opening; only that probe's own end (its verdict, or its
cancellation) frees the probe's place. A call that began before the
circuit opened and ends while a probe is out neither lets a second probe
through nor pushes the cool-down out again. Any success closes the circuit
(the engine answers); a probe whose circuit was closed meanwhile (by
another call's success) is then an ordinary call: its failure is one
failure among `failures`, not a re-opening, and a probe of an earlier
opening has no say over the current one.
Time comes from a function passed in, so tests need no sleeping.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Permit:
    """Leave to make one call; `probe` when it is the one call let through an open circuit.

    `opening` numbers the opening of the circuit a probe was let through (ordinary calls: 0).
    """

    probe: bool = False
    opening: int = 0


CLOSED = Permit()


class CircuitBreaker:
    def __init__(self, failures: int, cooldown_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.threshold = failures
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._consecutive = 0
        self._open_until: float | None = None
        self._probing = False
        self._openings = 0

    @property
    def is_open(self) -> bool:
        return self._open_until is not None

    def allow(self) -> Permit | None:
        """A permit if a call may go out now, else None. Half-open lets exactly one probe through."""
        if self._open_until is None:
            return CLOSED
        if self._probing or self._clock() < self._open_until:
            return None
        self._probing = True
        return Permit(probe=True, opening=self._openings)

    def allows(self) -> bool:
        """Whether `allow()` would hand out a permit now; takes nothing (a probe's place stays free)."""
        if self._open_until is None:
            return True
        return not self._probing and self._clock() >= self._open_until

    def retry_in_s(self) -> float:
        if self._open_until is None:
            return 0.0
        return max(0.0, self._open_until - self._clock())

    def record_success(self, permit: Permit = CLOSED) -> None:
        self._consecutive = 0
        self._open_until = None
        self._probing = False

    def record_failure(self, permit: Permit = CLOSED) -> None:
        self._consecutive += 1
        if self._is_current_probe(permit):
            self._probing = False
            self._open()  # one failure is enough for the probe
        elif self._open_until is None and self._consecutive >= self.threshold:
            self._open()

    def release(self, permit: Permit) -> None:
        """A call that ended without a verdict on the engine (cancelled, or a 4xx): a probe's place is free."""
        if self._is_current_probe(permit):
            self._probing = False

    def _is_current_probe(self, permit: Permit) -> bool:
        # `_probing` is only ever set while the circuit is open: closing clears it.
        return permit.probe and self._probing and permit.opening == self._openings

    def _open(self) -> None:
        self._openings += 1
        self._open_until = self._clock() + self.cooldown_s
