"""The continuation probe's verdict rule, case by case (the probe over HTTP: tests/cli/test_check_continuation.py)."""

from __future__ import annotations

import pytest

from moa_local.engines.continuation import CONTINUE_PARAMS, PROBE_MAX_TOKENS, PROBE_MESSAGES, judge


@pytest.mark.parametrize(
    ("text", "verdict"),
    [
        (" 6 7 8 9 10 11 1", "continues"),
        ("6", "continues"),
        (", 6, 7, 8", "continues"),
        ("\n6\n7", "continues"),
        ("1 2 3 4 5 6 7", "restarts"),  # the prefix repeated
        ("Sure! 1 2 3", "restarts"),  # a new answer
        ("w1 w2 w3", "unclear"),  # no number standing alone
        ("66 67", "unclear"),  # not the next number
        ("7 8 9", "unclear"),
        ("I cannot count.", "unclear"),
        ("", "unclear"),
    ],
)
def test_the_verdict_rule(text: str, verdict: str) -> None:
    assert judge(text) == verdict


def test_the_probe_is_the_request_checked_by_hand_on_the_cpu_engine() -> None:
    """tests/e2e/test_continuation_engine.py sends the probe's request; this is the one checked by hand."""
    assert (PROBE_MESSAGES, CONTINUE_PARAMS, PROBE_MAX_TOKENS) == (
        [
            {"role": "user", "content": "Count from 1 to 20, separated by spaces."},
            {"role": "assistant", "content": "1 2 3 4 5"},
        ],
        {"continue_final_message": True, "add_generation_prompt": False},
        16,
    )
