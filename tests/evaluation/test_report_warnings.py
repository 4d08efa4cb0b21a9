"""The report's warnings: failed answers and unrated judgments counted in words, a judge among the contestants."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from moa_local.evaluation.report import _warnings


def warnings(aggregate: dict[str, Any], *, judged: bool = False, contestants: tuple[str, ...] = ()) -> list[str]:
    settings = SimpleNamespace(judge="j", judge_contestants=list(contestants))
    return _warnings(settings, SimpleNamespace(judged=judged), aggregate)  # type: ignore[arg-type]


def test_one_failed_answer_and_several_unrated_judgments_read_as_english() -> None:
    assert warnings({"a": {"failed": 1, "unrated": 0}, "b": {"failed": 3, "unrated": 2}}) == [
        "a: 1 item had a failed answer (scored as failed)",
        "b: 3 items had a failed answer (scored as failed)",
        "b: 2 judgments gave no usable rating (not scored)",
    ]


def test_a_clean_run_has_no_warning_and_a_contestant_judge_has_one() -> None:
    assert warnings({"a": {"failed": 0, "unrated": 0}}) == []
    [only] = warnings({"a": {"failed": 0, "unrated": 0}}, judged=True, contestants=("j",))
    assert only.startswith("the judge (j) is also a contestant: j")
