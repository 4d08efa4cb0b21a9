"""The `math` suite: seeded grade-school problems from reasoning-gym's `gsm_symbolic`, with its verifier.

Objective, no judge. `--seed S --limit N` generates problems 0..N-1 of
`reasoning_gym.create_dataset("gsm_symbolic", seed=S, size=N)` (default
200): the same seed gives the same problems. The system message is
reasoning-gym's own default prompt (think step by step, then the answer
in `<answer></answer>` tags).

The answer-extraction rule, in order:
1. the text inside the last `<answer>...</answer>` pair, if there is one;
2. otherwise the last number in the reply (small models often drop the
   tags; "the answer is 48." gives 48).
Thousands separators inside a number are removed ("1,687.5" -> "1687.5").
The extracted text goes to reasoning-gym's `score_answer`, which compares
the first number in it with the expected answer as floats; an item passes
only on its full reward (1.0; its 0.01 for "a number, but wrong" is a fail).

Left out on purpose: partial credit, and any other generator.
"""

from __future__ import annotations

import functools
import re
from typing import Any

from moa_local.evaluation.errors import EvalError
from moa_local.evaluation.suite import Answer, Item, ItemScore, JudgeRequest, Metric, failed_score

NEEDS_EXTRA = "the math suite needs reasoning-gym: pip install 'moa-local[eval]'"
DEFAULT_COUNT = 200
_TAGGED = re.compile(r"<answer>\s?(.*?)\s?</answer>", re.DOTALL)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
_SEPARATOR = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")


class Arithmetic:
    name = "math"
    judged = False
    turns = 1
    max_tokens = 512
    metrics: tuple[Metric, ...] = (Metric("accuracy", "accuracy (verified final answer)", pass_fail=True),)

    def load(self, limit: int | None, seed: int) -> list[Item]:
        dataset = _dataset(seed, limit or DEFAULT_COUNT)
        system = str(_reasoning_gym().utils.SYSTEM_PROMPTS["default"])
        items = []
        for index in range(len(dataset)):
            entry = dataset[index]
            data = {"answer": str(entry["answer"]), "index": index, "seed": seed}
            items.append(Item(f"math-{seed}-{index}", (str(entry["question"]),), system, data))
        return items

    def judge_requests(self, item: Item, answers: list[str], seed: int) -> list[JudgeRequest]:
        return []

    def score(self, item: Item, answers: list[Answer | None], judgments: list[Answer | None]) -> ItemScore:
        answer = answers[0]
        if answer is None or not answer.ok:
            return failed_score(self.metrics, (answer.error if answer else None) or "no answer")
        extracted = extract_answer(answer.content)
        passed = verify(extracted, item.data["answer"])
        detail = {"extracted": extracted, "expected": item.data["answer"]}
        return ItemScore({"accuracy": (1.0 if passed else 0.0, 1.0)}, detail)


def extract_answer(reply: str) -> str | None:
    """The final answer by the module's rule: the last tagged answer, else the last number; None if neither."""
    tagged = _TAGGED.findall(reply)
    if tagged:
        return _SEPARATOR.sub("", tagged[-1].strip())
    numbers = _NUMBER.findall(reply)
    if not numbers:
        return None
    return _SEPARATOR.sub("", numbers[-1]).rstrip(",")


def verify(extracted: str | None, expected: str) -> bool:
    """reasoning-gym's gsm_symbolic verifier on the extracted answer: full reward only."""
    scorer = _reasoning_gym().get_score_answer_fn("gsm_symbolic")
    return bool(scorer(extracted, {"answer": expected}) == 1.0)


@functools.cache
def _dataset(seed: int, size: int) -> Any:
    return _reasoning_gym().create_dataset("gsm_symbolic", seed=seed, size=size)


@functools.cache
def _reasoning_gym() -> Any:
    try:
        import reasoning_gym  # type: ignore[import-untyped,import-not-found,unused-ignore]
        import reasoning_gym.utils  # type: ignore[import-untyped,import-not-found,unused-ignore]
    except ImportError:
        raise EvalError(NEEDS_EXTRA) from None
    return reasoning_gym
