"""The `alpaca-eval` suite: pairwise against AlpacaEval 2.0's GPT-4 Turbo outputs, with length control.

Each of the 805 instructions (or a seeded subset) is answered; the judge
then sees the instruction and two outputs, the model's and the reference's,
in an order drawn per item from the seed (the same for every model), and
names the better one with one token, `m` (first) or `M` (second): AlpacaEval
2.0's own prompt (`alpaca_eval_clf.txt`, ChatML split into system and user
messages) at temperature 0, `max_tokens` 1, `logprobs` with the top 5.
The item's preference is the probability that the model's output is the
better one (`judge.parse_preference`: log-probability weighted when the
judge returns them, else 1/0 from the token); an item the judge did not
decide is unrated, counted and reported.

Win rate = mean preference. The length-controlled win rate is fitted in
`length_control.py` (see there for what is refitted locally and why).
A failed answer loses its item (preference 0).

Left out on purpose: AlpacaEval's other annotators and its leaderboard.
"""

from __future__ import annotations

import random
import re

from moa_local.evaluation.data import alpaca_judge_template, alpaca_references
from moa_local.evaluation.judge import parse_preference
from moa_local.evaluation.suite import Answer, Item, ItemScore, JudgeRequest, Metric, subset

_CHATML = re.compile(r"<\|im_start\|>(\w+)\n(.*?)\n?<\|im_end\|>", re.DOTALL)


class AlpacaEval:
    name = "alpaca-eval"
    judged = True
    turns = 1
    max_tokens = 512
    metrics: tuple[Metric, ...] = (
        Metric("win_rate", "win rate against GPT-4 Turbo (preference-weighted)", pass_fail=False),
    )

    def load(self, limit: int | None, seed: int) -> list[Item]:
        items = []
        for index, row in enumerate(alpaca_references()):
            data = {"index": index, "reference": row["output"], "dataset": row.get("dataset"), "seed": seed}
            items.append(Item(f"alpaca-{index}", (str(row["instruction"]),), None, data))
        return subset(items, limit, seed)

    def judge_requests(self, item: Item, answers: list[str], seed: int) -> list[JudgeRequest]:
        first, second = (answers[0], item.data["reference"])
        if not model_goes_first(item):
            first, second = second, first
        values = {"{instruction}": item.turns[0], "{output_1}": first, "{output_2}": second}
        messages = chat_messages(alpaca_judge_template(), values)
        options = {"temperature": 0, "max_tokens": 1, "logprobs": True, "top_logprobs": 5}
        return [JudgeRequest(f"{item.id}.t1", messages, options)]

    def score(self, item: Item, answers: list[Answer | None], judgments: list[Answer | None]) -> ItemScore:
        answer = answers[0]
        if answer is None or not answer.ok:
            return ItemScore({"win_rate": (0.0, 1.0)}, {"failed": answer.error if answer else "no answer"})
        judgment = judgments[0] if judgments else None
        first = model_goes_first(item)
        m, weighted = parse_preference(judgment.raw if judgment is not None and judgment.ok else None)
        detail = {"model_first": first, "weighted": weighted, "model_chars": len(answer.content),
                  "reference_chars": len(item.data["reference"])}  # fmt: skip
        if m is None:
            return ItemScore({"win_rate": (0.0, 0.0)}, detail, unrated=1)
        preference = m if first else 1.0 - m
        return ItemScore({"win_rate": (preference, 1.0)}, detail | {"preference": preference})


def model_goes_first(item: Item) -> bool:
    """The item's coin, drawn from the run's seed: is the model's output shown first ("m")?"""
    return random.Random(f"{item.data['seed']}:{item.id}").random() < 0.5


def chat_messages(template: str, values: dict[str, str]) -> list[dict[str, str]]:
    """A ChatML prompt template as chat messages, its `{placeholders}` replaced (plain text, no format())."""
    pattern = re.compile("|".join(re.escape(key) for key in values))
    return [
        {"role": role, "content": pattern.sub(lambda match: values[match.group(0)], text).strip("\n")}
        for role, text in _CHATML.findall(template)
    ]
