"""The fake engine's knob set: updates are validated and atomic, also between threads."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from moa_local.testing.behavior import Behavior


class HeldTemplate(str):
    """A template whose validation waits until the test lets it go: an update caught half-way."""

    entered: threading.Event
    release: threading.Event

    def format(self, *args: Any, **kwargs: Any) -> str:
        self.entered.set()
        assert self.release.wait(timeout=30)
        return super().format(*args, **kwargs)


def test_fault_concurrent_updates_do_not_lose_each_other() -> None:
    """An update validated against the old state must not write that old state back over another's."""
    behavior = Behavior()
    template = HeldTemplate("{model}: {words}")
    template.entered, template.release = threading.Event(), threading.Event()
    first = threading.Thread(target=behavior.update, args=({"tokens": 1, "template": template},))
    second = threading.Thread(target=behavior.update, args=({"status": 503},))
    first.start()
    try:
        assert template.entered.wait(timeout=30)
        second.start()
        # Without the lock the second update completes while the first is held; with it, it waits for
        # the first. Either way the outcome asserted below must hold: this bound only lets the broken
        # version show itself.
        second.join(timeout=1)
    finally:
        template.release.set()
        first.join(timeout=30)
        second.join(timeout=30)
    assert (behavior.tokens, behavior.template, behavior.status) == (1, "{model}: {words}", 503)


@pytest.mark.parametrize(
    "patch",
    [
        {"tokens": 3, "template": "{model.nope}"},  # AttributeError while formatting
        {"tokens": 3, "template": "{request[0]}"},  # TypeError
        {"tokens": 3, "status": 99},
        {"tokens": 3, "tokenz": 1},
    ],
)
def test_fault_update_failing_validation_changes_nothing(patch: dict[str, Any]) -> None:
    behavior = Behavior(tokens=2)
    with pytest.raises(ValueError, match=r"^behavior"):
        behavior.update(patch)
    assert behavior == Behavior(tokens=2)


def test_take_counts_a_limited_fault_down_and_clears_it() -> None:
    behavior = Behavior(status=500, times=2)
    assert [behavior.take().status for _ in range(3)] == [500, 500, None]
    assert (behavior.status, behavior.times) == (None, None)
