"""The circuit breaker, on an injected clock: no sleeping."""

from __future__ import annotations

import pytest

from moa_local.engines.breaker import CircuitBreaker, Permit


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


def opened(clock: Clock, failures: int = 3, cooldown_s: float = 10.0) -> CircuitBreaker:
    breaker = CircuitBreaker(failures, cooldown_s, clock)
    for _ in range(failures):
        assert breaker.allow()
        breaker.record_failure()
    assert breaker.is_open
    return breaker


def test_closed_lets_everything_through(clock: Clock) -> None:
    breaker = CircuitBreaker(3, 10.0, clock)
    assert not breaker.is_open
    assert all(breaker.allow() for _ in range(100))
    assert breaker.retry_in_s() == 0.0


def test_opens_after_n_consecutive_failures(clock: Clock) -> None:
    breaker = CircuitBreaker(3, 10.0, clock)
    breaker.record_failure()
    breaker.record_failure()
    assert not breaker.is_open and breaker.allow()
    breaker.record_failure()
    assert breaker.is_open
    assert not breaker.allow()
    assert breaker.retry_in_s() == 10.0


def test_a_success_resets_the_count(clock: Clock) -> None:
    breaker = CircuitBreaker(3, 10.0, clock)
    for _ in range(5):
        breaker.record_failure()
        breaker.record_failure()
        breaker.record_success()
    assert not breaker.is_open


def test_skips_during_the_cooldown(clock: Clock) -> None:
    breaker = opened(clock)
    clock.advance(9.9)
    assert not breaker.allow()
    assert breaker.retry_in_s() == pytest.approx(0.1)


def test_after_the_cooldown_exactly_one_probe_goes(clock: Clock) -> None:
    breaker = opened(clock)
    clock.advance(10.0)
    assert breaker.retry_in_s() == 0.0
    assert breaker.allow()  # the probe
    assert not breaker.allow()  # everyone else waits for its verdict
    assert not breaker.allow()


def test_a_successful_probe_closes(clock: Clock) -> None:
    breaker = opened(clock)
    clock.advance(10.0)
    assert breaker.allow()
    breaker.record_success()
    assert not breaker.is_open
    assert breaker.allow() and breaker.allow()
    breaker.record_failure()  # counting starts from zero again
    assert not breaker.is_open


def test_a_failed_probe_reopens_for_another_cooldown(clock: Clock) -> None:
    breaker = opened(clock)
    clock.advance(10.0)
    probe = breaker.allow()
    assert probe is not None and probe.probe
    breaker.record_failure(probe)  # one failure is enough for the probe
    assert breaker.is_open
    assert not breaker.allow()
    clock.advance(9.0)
    assert not breaker.allow()
    clock.advance(1.0)
    assert breaker.allow()


def test_a_cancelled_probe_frees_the_slot(clock: Clock) -> None:
    breaker = opened(clock)
    clock.advance(10.0)
    probe = breaker.allow()
    assert probe is not None
    breaker.release(probe)
    assert breaker.is_open
    assert breaker.allow()  # another probe may go


def test_calls_that_began_before_the_circuit_opened_leave_the_probe_alone(clock: Clock) -> None:
    breaker = CircuitBreaker(2, 10.0, clock)
    early = [breaker.allow() for _ in range(4)]  # four calls go out while the circuit is closed
    assert all(permit is not None and not permit.probe for permit in early)
    breaker.record_failure(early[0])
    breaker.record_failure(early[1])
    assert breaker.is_open
    clock.advance(10.0)
    probe = breaker.allow()
    assert probe is not None and probe.probe
    assert early[2] is not None and early[3] is not None
    breaker.record_failure(early[2])  # an early call fails while the probe is out ...
    breaker.release(early[3])  # ... and another is cancelled
    assert breaker.allow() is None  # still one probe at a time
    assert breaker.retry_in_s() == 0.0  # and the cool-down was not pushed out
    breaker.record_success(probe)
    assert not breaker.is_open and breaker.allow() is not None


def test_threshold_of_one(clock: Clock) -> None:
    breaker = CircuitBreaker(1, 0.5, clock)
    breaker.record_failure()
    assert not breaker.allow()
    clock.advance(0.5)
    assert breaker.allow()


def test_a_probe_that_fails_after_another_success_closed_the_circuit_is_one_failure(clock: Clock) -> None:
    breaker = opened(clock, failures=3)
    clock.advance(10.0)
    probe = breaker.allow()
    assert probe is not None and probe.probe
    breaker.record_success()  # a call that began before the circuit opened answers: closed
    assert not breaker.is_open
    breaker.record_failure(probe)  # the probe fails now: an ordinary failure, one of three
    assert not breaker.is_open and breaker.allow() == Permit()
    breaker.record_failure()
    assert not breaker.is_open
    breaker.record_failure()
    assert breaker.is_open and breaker.retry_in_s() == 10.0


def test_a_probe_of_an_earlier_opening_has_no_say_over_the_current_one(clock: Clock) -> None:
    breaker = opened(clock, failures=2)
    clock.advance(10.0)
    stale = breaker.allow()
    assert stale is not None and stale.probe
    breaker.record_success()  # closed by another call while the first probe is still out
    breaker.record_failure()
    breaker.record_failure()  # and open again
    clock.advance(10.0)
    probe = breaker.allow()
    assert probe is not None and probe.probe
    breaker.record_failure(stale)  # the first probe ends late ...
    breaker.release(stale)
    assert breaker.allow() is None  # ... and neither lets a second probe through
    assert breaker.retry_in_s() == 0.0  # nor pushes the cool-down out
    breaker.record_failure(probe)  # the current probe's verdict still counts
    assert breaker.retry_in_s() == 10.0 and breaker.allow() is None


def test_allows_asks_without_taking_the_probes_place(clock: Clock) -> None:
    breaker = opened(clock)
    assert not breaker.allows()
    clock.advance(10.0)
    assert breaker.allows() and breaker.allows()
    probe = breaker.allow()
    assert probe is not None and probe.probe  # asking did not use it up
    assert not breaker.allows()
    breaker.record_success(probe)
    assert breaker.allows()
