"""What every suite is made of: items, answers, judgments, metrics and per-item scores.

A suite (`ifeval`, `math`, `mt-bench`, `alpaca-eval`) loads its items (a
seeded subset when `--limit` is given), says how many user turns each item
has, builds the judge's requests for a judged suite, and scores one item
from its answers (and judgments). A per-item score is, per metric, a pair
(numerator, denominator): a pass is (1, 1), IFEval's instruction level is
(instructions followed, instructions), an MT-Bench question is (sum of
rated turns, rated turns). A metric's value over items is the sum of
numerators over the sum of denominators, so the bootstrap resamples items
whatever the metric. A pair with denominator 0 is "not scored" (an
unrated judgment), counted, never silently dropped.

Left out on purpose: generation and judging I/O (`generation.py`),
statistics (`stats.py`), the report (`report.py`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

Score = dict[str, tuple[float, float]]
T = TypeVar("T")


@dataclass(frozen=True)
class Metric:
    name: str
    label: str
    pass_fail: bool  # per-item values are 0/1: McNemar applies to paired comparisons
    scale: float = 100.0  # shown as value * scale
    unit: str = "%"


@dataclass(frozen=True)
class Item:
    id: str
    turns: tuple[str, ...]
    system: str | None = None
    data: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {"id": self.id, "turns": list(self.turns), "system": self.system, "data": self.data}

    @classmethod
    def from_json(cls, row: dict[str, Any]) -> Item:
        return cls(str(row["id"]), tuple(row["turns"]), row.get("system"), dict(row.get("data") or {}))


@dataclass(frozen=True)
class Answer:
    """One request's outcome, as the batch files hold it."""

    ok: bool
    content: str = ""
    error: str | None = None
    usage: dict[str, int] = field(default_factory=dict)
    trace: dict[str, Any] | None = None
    raw: dict[str, Any] | None = None  # the whole response body (a judge's logprobs live here)


@dataclass(frozen=True)
class ItemScore:
    scores: Score
    detail: dict[str, Any] = field(default_factory=dict)
    unrated: int = 0  # judgments without a usable rating


@dataclass(frozen=True)
class Cost:
    """What answering one item cost, over its turns."""

    tokens: int  # generated tokens, every call
    calls: int  # engine calls (attempts)
    wall_s: float


@dataclass(frozen=True)
class JudgeRequest:
    custom_id: str
    messages: list[dict[str, str]]
    options: dict[str, Any] = field(default_factory=dict)  # extra body fields (max_tokens, logprobs, ...)


class Suite(Protocol):
    name: str
    metrics: tuple[Metric, ...]
    judged: bool
    turns: int  # user turns per item
    max_tokens: int  # default generation cap per answer

    def load(self, limit: int | None, seed: int) -> list[Item]: ...

    def judge_requests(self, item: Item, answers: list[str], seed: int) -> list[JudgeRequest]: ...

    def score(self, item: Item, answers: list[Answer | None], judgments: list[Answer | None]) -> ItemScore: ...


def subset(rows: list[T], limit: int | None, seed: int) -> list[T]:
    """`limit` rows drawn with `seed` (kept in their original order), or all of them."""
    if limit is None or limit >= len(rows):
        return list(rows)
    chosen = sorted(random.Random(seed).sample(range(len(rows)), limit))
    return [rows[i] for i in chosen]


def failed_score(metrics: tuple[Metric, ...], why: str) -> ItemScore:
    """A failed answer scores 0 on every metric (the system did not answer)."""
    return ItemScore({metric.name: (0.0, 1.0) for metric in metrics}, {"failed": why})
