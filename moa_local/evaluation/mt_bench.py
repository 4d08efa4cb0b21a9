"""The `mt-bench` suite: 80 two-turn questions, single-answer grading 1-10 by a judge at temperature 0.

Each question is asked, then its second turn with the model's first answer
in the history. Each turn is judged on its own with MT-Bench's standard
prompts (from opencompass's copy, `data.py`): `single_v1` for turn 1 and
`single_v1_multi_turn` for turn 2, or the reference-answer variants
(`single_math_v1`, `single_math_v1_multi_turn`, with GPT-4's reference
answers) for the math, reasoning and coding questions. The rating is the
judgment's `[[rating]]` (`judge.parse_rating`). A question's score is the
sum of its rated turns over their count; the suite's score is the mean
over all rated turns (MT-Bench's). A turn whose judgment failed or holds
no rating is unrated: counted per model and reported, not scored.
A turn whose answer failed scores 1, the scale's floor (the system gave
no answer), and is reported as failed.

Left out on purpose: pairwise grading (see `alpaca-eval`).
"""

from __future__ import annotations

from moa_local.evaluation.data import mt_bench_questions, mt_bench_references, mt_bench_templates
from moa_local.evaluation.judge import parse_rating
from moa_local.evaluation.suite import Answer, Item, ItemScore, JudgeRequest, Metric, subset

NEED_REFERENCE = ("math", "reasoning", "coding")
JUDGE_MAX_TOKENS = 1024
FLOOR = 1.0


class MtBench:
    name = "mt-bench"
    judged = True
    turns = 2
    max_tokens = 512
    metrics: tuple[Metric, ...] = (
        Metric("score", "MT-Bench score (1-10, mean over rated turns)", pass_fail=False, scale=1.0, unit=""),
    )

    def load(self, limit: int | None, seed: int) -> list[Item]:
        references = mt_bench_references()
        items = []
        for row in subset(mt_bench_questions(), limit, seed):
            qid, category = int(row["question_id"]), str(row["category"])
            data = {"question_id": qid, "category": category, "reference": references.get(qid)}
            items.append(Item(f"mt-bench-{qid}", tuple(row["turns"]), None, data))
        return items

    def judge_requests(self, item: Item, answers: list[str], seed: int) -> list[JudgeRequest]:
        templates = mt_bench_templates()
        reference = item.data.get("reference") if item.data["category"] in NEED_REFERENCE else None
        values = {"question": item.turns[0], "question_1": item.turns[0], "question_2": item.turns[1]}
        if reference:
            values |= {"ref_answer_1": reference[0], "ref_answer_2": reference[1]}
        requests = []
        for turn, name in enumerate(("single_v1", "single_v1_multi_turn")):
            if turn >= len(answers):
                break
            if reference:
                name = name.replace("single_v1", "single_math_v1")
            template = templates[name]
            prompt = template["prompt_template"].format(**values, prediction_r1=answers[0],
                                                        prediction_r2=answers[1] if turn else "")  # fmt: skip
            messages = [{"role": "system", "content": template["system_prompt"]}, {"role": "user", "content": prompt}]
            options = {"temperature": 0, "max_tokens": JUDGE_MAX_TOKENS}
            requests.append(JudgeRequest(f"{item.id}.t{turn + 1}", messages, options))
        return requests

    def score(self, item: Item, answers: list[Answer | None], judgments: list[Answer | None]) -> ItemScore:
        ratings: list[float | None] = []
        total = count = 0.0
        unrated = failed = 0
        for turn in range(self.turns):
            answer = answers[turn] if turn < len(answers) else None
            if answer is None or not answer.ok:
                failed += 1
                ratings.append(FLOOR)
                total, count = total + FLOOR, count + 1
                continue
            judgment = judgments[turn] if turn < len(judgments) else None
            rating = parse_rating(judgment.content) if judgment is not None and judgment.ok else None
            ratings.append(rating)
            if rating is None:
                unrated += 1
            else:
                total, count = total + rating, count + 1
        detail = {"ratings": ratings, "category": item.data["category"], "failed_turns": failed}
        return ItemScore({"score": (total, count)}, detail, unrated)
