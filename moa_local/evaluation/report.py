"""The report of an evaluation: `results.json` (per item and aggregate), `summary.md`, and a plot.

Every metric gets its value and 95% bootstrap interval (`stats.py`), per
model; cost sits beside it (generated tokens, engine calls and wall time
per answered item, from the answers' usage and traces). Each mixture is
compared with each single model (endpoint) of the run on every metric,
item by item, with the verdict in words; and, when the run names a
baseline mixture, with it (`baseline_comparisons`: variants of one
mixture against the original). The AlpacaEval suite adds the
length-controlled win rate (`length_control.py`), its interval from at
most 1,000 resamples (each one a refit). Failed answers and unrated
judgments are counted per model, and the judge is named, with a warning
when it is also a contestant.

Left out on purpose: generating or judging anything (`run.py`).
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from moa_local.evaluation import length_control, plot, stats
from moa_local.evaluation.errors import EvalError
from moa_local.evaluation.summary import summary_markdown

if TYPE_CHECKING:
    from moa_local.evaluation.manifest import Settings
    from moa_local.evaluation.suite import Cost, Item, ItemScore, Metric, Suite

LC_RESAMPLES = 1_000


def build(settings: Settings, suite: Suite, items: list[Item], scores: dict[str, list[ItemScore]],
          costs: dict[str, list[Cost | None]]) -> dict[str, Any]:  # fmt: skip
    aggregate = {model: _aggregate(settings, suite, scores[model], costs[model]) for model in settings.models}
    mixtures = [m for m in settings.models if settings.kinds.get(m) == "mixture"]
    singles = [m for m in settings.models if settings.kinds.get(m) == "endpoint"]
    comparisons = [
        _compare(settings, metric, mixture, single, scores)
        for mixture in mixtures for single in singles for metric in suite.metrics
    ]  # fmt: skip
    baseline = settings.baseline
    against_baseline = [
        _compare(settings, metric, mixture, baseline, scores, key="baseline")
        for mixture in mixtures if baseline and mixture != baseline for metric in suite.metrics
    ]  # fmt: skip
    per_item = [
        {"id": item.id, "models": {m: _item(scores[m][i], costs[m][i], suite) for m in settings.models}}
        for i, item in enumerate(items)
    ]
    return {
        "suite": suite.name, "items": len(items), "seed": settings.seed, "limit": settings.limit,
        "max_tokens": settings.max_tokens or suite.max_tokens, "temperature": settings.temperature,
        "resamples": settings.resamples,
        "metrics": [{"name": m.name, "label": m.label, "pass_fail": m.pass_fail, "scale": m.scale, "unit": m.unit}
                    for m in suite.metrics],
        "models": [{"name": m, "kind": settings.kinds.get(m, "endpoint")} for m in settings.models],
        "judge": _judge(settings, suite), "aggregate": aggregate, "comparisons": comparisons,
        "baseline": baseline, "baseline_comparisons": against_baseline,
        "warnings": _warnings(settings, suite, aggregate), "per_item": per_item,
    }  # fmt: skip


def write(folder: Path, results: dict[str, Any]) -> None:
    try:
        (folder / "results.json").write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n", "utf-8")
        (folder / "summary.md").write_text(summary_markdown(results), "utf-8")
    except OSError as exc:
        raise EvalError(f"{folder}: cannot write the report ({exc.strerror})") from None
    plot.draw(results, folder / "plot.png")


def _aggregate(
    settings: Settings, suite: Suite, scores: list[ItemScore], costs: Sequence[Cost | None]
) -> dict[str, Any]:
    metrics = {}
    for metric in suite.metrics:
        estimate = stats.bootstrap([s.scores[metric.name] for s in scores], settings.resamples, settings.seed)
        metrics[metric.name] = _scaled(estimate, metric.scale)
    answered = [cost for cost in costs if cost is not None]
    count = max(1, len(answered))
    result: dict[str, Any] = {
        "metrics": metrics,
        "cost": {
            "answered_items": len(answered),
            "tokens_per_item": sum(c.tokens for c in answered) / count,
            "calls_per_item": sum(c.calls for c in answered) / count,
            "wall_s_per_item": sum(c.wall_s for c in answered) / count,
        },
        "failed": sum(1 for s in scores if s.detail.get("failed") or s.detail.get("failed_turns")),
        "unrated": sum(s.unrated for s in scores),
    }
    if suite.name == "alpaca-eval":
        result["lc_win_rate"] = _length_controlled(scores, settings)
        result["weighted_judgments"] = sum(1 for s in scores if s.detail.get("weighted"))
    return result


def _length_controlled(scores: list[ItemScore], settings: Settings) -> dict[str, Any]:
    rows = [(s.detail["preference"], s.detail["model_chars"], s.detail["reference_chars"])
            for s in scores if "preference" in s.detail]  # fmt: skip
    fitted = length_control.fit(*_columns(rows)) if rows else None
    if fitted is None:
        return {"value": None, "low": None, "high": None, "n": 0}
    rng = random.Random(settings.seed)
    resamples = min(LC_RESAMPLES, settings.resamples)
    values = []
    for _ in range(resamples):
        refit = length_control.fit(*_columns(rng.choices(rows, k=len(rows))))
        assert refit is not None
        values.append(refit.lc_win_rate * 100)
    low, high = stats.percentile_interval(values)
    return {"value": fitted.lc_win_rate * 100, "low": low, "high": high, "n": len(rows), "resamples": resamples,
            "length_coefficient": fitted.theta}  # fmt: skip


def _columns(rows: Sequence[tuple[float, int, int]]) -> tuple[list[float], list[int], list[int]]:
    return [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]


def _compare(settings: Settings, metric: Metric, mixture: str, other: str,
             scores: dict[str, list[ItemScore]], key: str = "single") -> dict[str, Any]:  # fmt: skip
    first = [s.scores[metric.name] for s in scores[mixture]]
    second = [s.scores[metric.name] for s in scores[other]]
    result = stats.compare(first, second, pass_fail=metric.pass_fail, resamples=settings.resamples, seed=settings.seed)
    test = result.mcnemar
    return {
        "mixture": mixture, key: other, "metric": metric.name, **_scaled(result.diff, metric.scale),
        "mcnemar": None if test is None else {"b": test.b, "c": test.c, "p": test.p}, "verdict": result.verdict,
    }  # fmt: skip


def _scaled(estimate: stats.Estimate, scale: float) -> dict[str, Any]:
    def times(x: float | None) -> float | None:
        return None if x is None else x * scale

    return {"value": times(estimate.value), "low": times(estimate.low), "high": times(estimate.high), "n": estimate.n}


def _item(score: ItemScore, cost: Cost | None, suite: Suite) -> dict[str, Any]:
    return {
        "scores": {name: list(pair) for name, pair in score.scores.items()}, "detail": score.detail,
        "unrated": score.unrated,
        "cost": None if cost is None else {"tokens": cost.tokens, "calls": cost.calls, "wall_s": round(cost.wall_s, 4)},
    }  # fmt: skip


def _judge(settings: Settings, suite: Suite) -> dict[str, Any] | None:
    if not suite.judged:
        return None
    return {"name": settings.judge, "model": settings.judge_model, "temperature": 0,
            "contestants": list(settings.judge_contestants)}  # fmt: skip


def _warnings(settings: Settings, suite: Suite, aggregate: dict[str, Any]) -> list[str]:
    warnings = []
    if suite.judged and settings.judge_contestants:
        warnings.append(f"the judge ({settings.judge}) is also a contestant: {', '.join(settings.judge_contestants)}; "
                        "a judge tends to favour its own answers")  # fmt: skip
    for model, result in aggregate.items():
        if result["failed"]:
            warnings.append(f"{model}: {_count(result['failed'], 'item')} had a failed answer (scored as failed)")
        if result["unrated"]:
            warnings.append(f"{model}: {_count(result['unrated'], 'judgment')} gave no usable rating (not scored)")
    return warnings


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
