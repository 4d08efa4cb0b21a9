"""`summary.md`: the results as a person reads them; scores with intervals, cost, verdicts in words."""

from __future__ import annotations

from typing import Any

LOCAL_JUDGE = (
    "Scores from a local judge compare systems under that judge; "
    "they are not comparable with published GPT-4-judged numbers."
)


def _sampling(temperature: float | None) -> str:
    if temperature is None:
        return "each model at its own temperature: an endpoint's engine default, a mixture's aggregator's"
    return f"every answer sampled at temperature {temperature:g}; a mixture's proposers keep their configured sampling"


def summary_markdown(results: dict[str, Any]) -> str:
    metrics = results["metrics"]
    lines = [f"# moa-local eval: {results['suite']}", ""]
    lines.append(
        f"{results['items']} items (seed {results['seed']}, limit {results['limit'] or 'all'}, at most "
        f"{results['max_tokens']} generated tokens per answer, {_sampling(results.get('temperature'))}). "
        f"Intervals: 95% percentile bootstrap over items, {results['resamples']:,} resamples, seeded."
    )
    judge = results["judge"]
    if judge:
        lines += ["", f"Judge: `{judge['model']}` ({judge['name']}), temperature 0. " + LOCAL_JUDGE]
    lines += ["", _table(results), ""]
    if results["suite"] == "alpaca-eval":
        lines += _alpaca(results)
    comparisons, against_baseline = results["comparisons"], results.get("baseline_comparisons") or []
    if comparisons:
        lines += ["## Each mixture against each single model", ""]
        lines += [f"- {sentence(c, metrics)}" for c in comparisons]
    if against_baseline:
        lines += ["", f"## Each mixture against the baseline mixture {results['baseline']}", ""]
        lines += [f"- {sentence(c, metrics)}" for c in against_baseline]
    if comparisons or against_baseline:
        lines += ["", "Pass/fail metrics: McNemar's exact test (p < 0.05); others: the paired bootstrap interval of "
                      "the per-item difference excluding 0. No correction for multiple comparisons.", ""]  # fmt: skip
    if results["warnings"]:
        lines += ["## Warnings", ""] + [f"- {warning}" for warning in results["warnings"]] + [""]
    return "\n".join(lines)


def _table(results: dict[str, Any]) -> str:
    metrics = results["metrics"]
    head = ["model", "kind", *(m["label"] for m in metrics), "tokens/item", "engine calls/item", "wall s/item",
            "failed", "unrated"]  # fmt: skip
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for model in results["models"]:
        data = results["aggregate"][model["name"]]
        cost = data["cost"]
        cells = [model["name"], model["kind"], *(interval(data["metrics"][m["name"]], m["unit"]) for m in metrics),
                 f"{cost['tokens_per_item']:.0f}", f"{cost['calls_per_item']:.1f}", f"{cost['wall_s_per_item']:.1f}",
                 str(data["failed"]), str(data["unrated"])]  # fmt: skip
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def _alpaca(results: dict[str, Any]) -> list[str]:
    lines = ["Length-controlled win rate (refitted locally without the instruction-difficulty term):", ""]
    for model in results["models"]:
        data = results["aggregate"][model["name"]]
        lc = data["lc_win_rate"]
        lines.append(f"- {model['name']}: {interval(lc, '%')} (n={lc['n']}, {lc.get('resamples', 0)} resamples); "
                     f"{data['weighted_judgments']} judgments weighted by log-probabilities")  # fmt: skip
    return [*lines, ""]


def interval(estimate: dict[str, Any], unit: str) -> str:
    if estimate["value"] is None:
        return "n/a"
    return f"{estimate['value']:.1f}{unit} [{estimate['low']:.1f}, {estimate['high']:.1f}]"


def sentence(c: dict[str, Any], metrics: list[dict[str, Any]]) -> str:
    """One comparison in words: who, on what, the verdict, the evidence."""
    metric = next(m for m in metrics if m["name"] == c["metric"])
    other = c.get("single") or c["baseline"]
    unit = " points" if metric["unit"] == "%" else ""
    if c["value"] is None:
        return f"**{c['mixture']}** vs **{other}**, {metric['label']}: no item scored by both"
    verdict = {"better": f"is better than {other}", "worse": f"is worse than {other}"}.get(
        c["verdict"], f"shows no detectable difference from {other} at this sample size"
    )
    text = (f"**{c['mixture']}** {verdict} on {metric['label']}: {c['value']:+.1f}{unit} "
            f"(95% CI {c['low']:+.1f} to {c['high']:+.1f}, n={c['n']})")  # fmt: skip
    if c["mcnemar"]:
        test = c["mcnemar"]
        text += f"; McNemar b={test['b']}, c={test['c']}, p={test['p']:.3g}"
    return text
