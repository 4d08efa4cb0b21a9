"""A run that names a baseline mixture compares every other mixture with it, item by item, as with a single model."""

from __future__ import annotations

from typing import Any

from moa_local.evaluation.manifest import Settings
from moa_local.evaluation.report import build
from moa_local.evaluation.suite import Cost, Item, ItemScore
from moa_local.evaluation.suites import get_suite
from moa_local.evaluation.summary import summary_markdown

PASSES = {  # math accuracy per item, 10 items: "variant" fails 4 items "base" passes, passes none it fails
    "single": [1, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    "base": [1, 1, 1, 1, 1, 0, 0, 0, 0, 0],
    "variant": [1, 0, 0, 0, 0, 0, 0, 0, 0, 0],
}


def results(baseline: str | None) -> dict[str, Any]:
    suite = get_suite("math")
    kinds: dict[str, Any] = {"single": "endpoint", "base": "mixture", "variant": "mixture"}
    settings = Settings(suite="math", models=tuple(PASSES), kinds=kinds, resamples=200, baseline=baseline)
    items = [Item(f"q{i}", ("question",)) for i in range(10)]
    scores = {m: [ItemScore({"accuracy": (float(p), 1.0)}) for p in passes] for m, passes in PASSES.items()}
    costs: dict[str, list[Cost | None]] = {m: [Cost(10, 1, 1.0)] * 10 for m in PASSES}
    return build(settings, suite, items, scores, costs)


def test_each_other_mixture_is_compared_with_the_baseline_and_the_summary_says_so() -> None:
    report = results("base")
    (versus,) = report["baseline_comparisons"]
    assert (versus["mixture"], versus["baseline"], versus["metric"]) == ("variant", "base", "accuracy")
    assert versus["value"] == -40.0 and versus["mcnemar"] == {"b": 0, "c": 4, "p": 0.125}
    assert versus["verdict"] == "no detectable difference at this sample size"
    assert len(report["comparisons"]) == 2  # both mixtures against the single model
    text = summary_markdown(report)
    assert "## Each mixture against the baseline mixture base" in text
    sentence = "**variant** shows no detectable difference from base at this sample size on accuracy"
    assert f"{sentence} (verified final answer): -40.0 points" in text


def test_without_a_baseline_mixtures_are_compared_with_single_models_only() -> None:
    report = results(None)
    assert report["baseline_comparisons"] == [] and "baseline mixture" not in summary_markdown(report)
