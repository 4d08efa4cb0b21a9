"""One evaluation from start to report: items, answers, judgments, scores; resumable, rescorable.

    await evaluate(folder, settings, answer=execute, judge=judge_client, views=...)   # generate, judge, report
    rescore(folder)                                                                   # report from the folder only
    rescore(folder, models=["qwen", "moa-cpu"])                                       # ... on some of its models

The executors are injected (the CLI passes `api/completion.complete` over
an open pool for the answers, and a `JudgeClient` for the judge), so this
package imports neither `api/` nor `cli/`. Rounds run one after another:
every model's turn 1, then every model's turn 2 (its history holds the
model's own first answer; an item whose first turn failed gets no second),
then the judge over every model's answers. Each answer asks for the `moa`
trace, kept with its usage in the answer files: the cost columns come from
there (generated tokens, engine calls, wall time per item).

Left out on purpose: statistics and files of the report (`report.py`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from moa_local.evaluation import manifest, report
from moa_local.evaluation.errors import EvalError
from moa_local.evaluation.generation import Rounds, ViewFactory
from moa_local.evaluation.suite import Answer, Cost, Item, ItemScore, Suite
from moa_local.evaluation.suites import get_suite
from moa_local.jobs import Execute


async def evaluate(
    folder: Path, settings: manifest.Settings, *, answer: Execute, judge: Execute | None,
    max_inflight: int = 16, views: ViewFactory | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Generate what is missing, judge it, and write the report; the results."""
    suite = get_suite(settings.suite)
    settings = manifest.merge(manifest.read_settings(folder), settings, folder)
    if settings.baseline is not None and settings.baseline not in settings.models:
        raise EvalError(f"the baseline '{settings.baseline}' is not a model of this run (models: "
                        f"{', '.join(settings.models)}): add it to --models")  # fmt: skip
    items = manifest.read_items(folder)
    if items is None:
        items = suite.load(settings.limit, settings.seed)
        manifest.write_items(folder, items)
    manifest.write_settings(folder, settings)
    rounds = Rounds(folder, max_inflight=max_inflight, views=views)
    for turn in range(suite.turns):
        for model in settings.models:
            previous = [rounds.read("answers", f"{model}.turn{k + 1}") for k in range(turn)]
            requests = [(f"{item.id}.t{turn + 1}", _body(model, item, turn, previous, suite, settings))
                        for item in items if _history_ok(item, previous)]  # fmt: skip
            await rounds.run(answer, "answers", f"{model}.turn{turn + 1}", requests)
    if suite.judged:
        if judge is None:
            raise EvalError(f"the {suite.name} suite needs a judge: --judge ENDPOINT|URL")
        for model in settings.models:
            answers = _answers(rounds, model, suite)
            requests = [(request.custom_id, {"messages": request.messages, **request.options})
                        for item in items for request in suite.judge_requests(item, _texts(answers, item, suite),
                                                                              settings.seed)]  # fmt: skip
            await rounds.run(judge, "judge", model, requests)
    return rescore(folder)


def rescore(folder: Path, models: list[str] | None = None) -> dict[str, Any]:
    """Score the answers the folder holds (of `models`, default all) and write results.json, summary.md, the plot."""
    settings = manifest.read_settings(folder)
    items = manifest.read_items(folder)
    if settings is None or items is None:
        raise EvalError(f"{folder}: no evaluation here (no {manifest.MANIFEST} and {manifest.ITEMS})")
    if models is not None:
        settings = manifest.only(settings, models)
    suite = get_suite(settings.suite)
    rounds = Rounds(folder, max_inflight=1)
    scores: dict[str, list[ItemScore]] = {}
    costs: dict[str, list[Cost | None]] = {}
    for model in settings.models:
        answers = _answers(rounds, model, suite)
        judged = rounds.read("judge", model) if suite.judged else {}
        scores[model], costs[model] = [], []
        for item in items:
            turns = [answers[t].get(f"{item.id}.t{t + 1}") for t in range(suite.turns)]
            judgments = [judged.get(f"{item.id}.t{t + 1}") for t in range(suite.turns)]
            scores[model].append(suite.score(item, turns, judgments))
            costs[model].append(cost_of(turns))
    results = report.build(settings, suite, items, scores, costs)
    report.write(folder, results)
    if suite.judged:
        _check_judge(settings, suite, scores, rounds)
    return results


def cost_of(turns: list[Answer | None]) -> Cost | None:
    """What answering an item cost, from its answers' usage and traces; None if none was answered."""
    done = [answer for answer in turns if answer is not None and answer.ok]
    if not done:
        return None
    tokens = sum(int(answer.usage.get("completion_tokens") or 0) for answer in done)
    calls, wall = 0, 0.0
    for answer in done:
        trace = answer.trace or {}
        agents = [agent for layer in trace.get("layers") or () for agent in layer.get("agents") or ()]
        agents += [trace["aggregator"]] if trace.get("aggregator") else []
        calls += sum(int(agent.get("attempts") or 0) for agent in agents)
        wall += float(trace.get("duration_s") or 0.0)
    return Cost(tokens, calls, wall)


def _body(model: str, item: Item, turn: int, previous: list[dict[str, Answer]], suite: Suite,
          settings: manifest.Settings) -> dict[str, Any]:  # fmt: skip
    messages = [{"role": "system", "content": item.system}] if item.system else []
    for k in range(turn):
        messages += [{"role": "user", "content": item.turns[k]},
                     {"role": "assistant", "content": previous[k][f"{item.id}.t{k + 1}"].content}]  # fmt: skip
    messages.append({"role": "user", "content": item.turns[turn]})
    body = {"model": model, "messages": messages, "max_tokens": settings.max_tokens or suite.max_tokens,
            "seed": settings.seed, "moa": {"trace": True}}  # fmt: skip
    if settings.temperature is not None:  # a mixture's aggregator samples at it, as for any request
        body["temperature"] = settings.temperature
    return body


def _history_ok(item: Item, previous: list[dict[str, Answer]]) -> bool:
    for k, answers in enumerate(previous):
        answer = answers.get(f"{item.id}.t{k + 1}")
        if answer is None or not answer.ok:
            return False
    return True


def _answers(rounds: Rounds, model: str, suite: Suite) -> list[dict[str, Answer]]:
    return [rounds.read("answers", f"{model}.turn{t + 1}") for t in range(suite.turns)]


def _texts(answers: list[dict[str, Answer]], item: Item, suite: Suite) -> list[str]:
    """The item's answered turns, in order, up to the first that failed."""
    texts = []
    for t in range(suite.turns):
        answer = answers[t].get(f"{item.id}.t{t + 1}")
        if answer is None or not answer.ok:
            break
        texts.append(answer.content)
    return texts


def _check_judge(settings: manifest.Settings, suite: Suite, scores: dict[str, list[ItemScore]], rounds: Rounds) -> None:
    """A judge that rated nothing at all is an error (the report is written first, to look at)."""
    judged = [answer for model in settings.models for answer in rounds.read("judge", model).values()]
    unrated = sum(score.unrated for per_item in scores.values() for score in per_item)
    if not judged or unrated < len(judged):
        return
    replies = [answer for answer in judged if answer.ok]
    if not replies:
        first = next((answer.error for answer in judged if answer.error), "no judgment came back")
        raise EvalError(f"judge {settings.judge}: every judgment failed ({len(judged)}); first: {first}")
    sample = replies[0].content.strip().replace("\n", " ")[:80]
    expected = "[[rating]]" if suite.name == "mt-bench" else "'m' or 'M'"
    raise EvalError(f"judge {settings.judge} never emitted a rating ({expected}) in {len(replies)} judgments; "
                    f"first reply: {sample!r}")  # fmt: skip
