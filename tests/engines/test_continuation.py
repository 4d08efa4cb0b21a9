"""The continuation probe's verdict rule, case by case (the probe over HTTP: tests/cli/test_check_continuation.py)."""

from __future__ import annotations

import pytest

from moa_local.engines.continuation import judge


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
