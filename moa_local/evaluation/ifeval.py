"""The `ifeval` suite: Google's IFEval prompts, scored by lm-evaluation-harness's IFEval checker.

Objective, no judge. The 541 prompts come from a pinned wheel (`data.py`);
the checking is lm-eval's own `process_results` (the Google Research
checker code, maintained in lm-evaluation-harness), called per item: it
gives prompt-level and instruction-level results, strict and loose
(loose retries the answer without its first/last line and without `*`).

The NLTK-data gap: the checkers count sentences with NLTK's punkt model
and call `word_tokenize`, which needs punkt_tab; neither data package can
be installed offline, so 64 of the 541 prompts would fail to score. When
the data is missing, sentence counting falls back to the checker module's
own regex splitter (`split_into_sentences`) and `word_tokenize` runs with
`preserve_line=True` (no sentence split first); with both, every prompt
scores. lm-eval also tries to download punkt_tab when its module is first
imported: that call is replaced by a refusal for the import, so scoring
never reaches the network.

Two checkers draw random numbers while scoring, so that rescoring the
same answers moved instruction-level accuracy by a few tenths of a point:
language detection (`language:response_language` and the all-capitals
check) is langdetect's, which samples unless seeded; and
`keywords:letter_frequency` picks a random letter when the prompt's letter
is not one (the IFEval data asks for "#" in one prompt). `checker()` seeds
langdetect (`DetectorFactory.seed` 0) and each item is scored after
`random.seed` with its key, so scoring is repeatable (the caller's
random state is put back afterwards); the checks themselves are unchanged.

Left out on purpose: re-implementing any checker.
"""

from __future__ import annotations

import contextlib
import functools
import io
import random
from collections.abc import Iterator
from typing import Any

from moa_local.evaluation.data import ifeval_prompts
from moa_local.evaluation.errors import EvalError
from moa_local.evaluation.suite import Answer, Item, ItemScore, JudgeRequest, Metric, failed_score, subset

NEEDS_EXTRA = "the ifeval suite needs lm-eval's IFEval checker: pip install 'moa-local[eval]'"


class IfEval:
    name = "ifeval"
    judged = False
    turns = 1
    max_tokens = 512
    metrics: tuple[Metric, ...] = (
        Metric("prompt_strict", "prompt-level strict accuracy", pass_fail=True),
        Metric("prompt_loose", "prompt-level loose accuracy", pass_fail=True),
        Metric("inst_strict", "instruction-level strict accuracy", pass_fail=False),
        Metric("inst_loose", "instruction-level loose accuracy", pass_fail=False),
    )

    def load(self, limit: int | None, seed: int) -> list[Item]:
        rows = subset(ifeval_prompts(), limit, seed)
        return [
            Item(f"ifeval-{row['key']}", (row["prompt"],), None,
                 {"key": row["key"], "instruction_id_list": row["instruction_id_list"], "kwargs": row["kwargs"]})
            for row in rows
        ]  # fmt: skip

    def judge_requests(self, item: Item, answers: list[str], seed: int) -> list[JudgeRequest]:
        return []

    def score(self, item: Item, answers: list[Answer | None], judgments: list[Answer | None]) -> ItemScore:
        answer = answers[0]
        if answer is None or not answer.ok:
            return failed_score(self.metrics, (answer.error if answer else None) or "no answer")
        return score_response(item, answer.content)


def score_response(item: Item, response: str) -> ItemScore:
    """lm-eval's IFEval result for one response, as per-metric pairs."""
    doc = {"key": item.data["key"], "prompt": item.turns[0], "instruction_id_list": item.data["instruction_id_list"],
           "kwargs": item.data["kwargs"]}  # fmt: skip
    utils = checker()
    state = random.getstate()
    random.seed(f"ifeval-{item.data['key']}")  # the letter_frequency checker's random letter (module docstring)
    try:
        result = utils.process_results(doc, [response])
    finally:
        random.setstate(state)  # the caller's random sequence goes on as if scoring had drawn nothing
    strict, loose = list(result["inst_level_strict_acc"]), list(result["inst_level_loose_acc"])
    scores = {
        "prompt_strict": (float(result["prompt_level_strict_acc"]), 1.0),
        "prompt_loose": (float(result["prompt_level_loose_acc"]), 1.0),
        "inst_strict": (float(sum(strict)), float(len(strict))),
        "inst_loose": (float(sum(loose)), float(len(loose))),
    }
    detail = {"instructions": item.data["instruction_id_list"], "strict": strict, "loose": loose}
    return ItemScore(scores, detail)


@functools.cache
def checker() -> Any:
    """lm-eval's `tasks.ifeval.utils`, with the NLTK-data gap closed (see the module docstring)."""
    try:
        import nltk  # type: ignore[import-untyped,import-not-found,unused-ignore]
    except ImportError:
        raise EvalError(NEEDS_EXTRA) from None
    with _no_downloads(nltk):
        try:
            from lm_eval.tasks.ifeval import (  # type: ignore[import-untyped,import-not-found,unused-ignore]
                instructions_util,
                utils,
            )
        except ImportError as exc:
            raise EvalError(f"{NEEDS_EXTRA} ({exc})") from None
    close_nltk_gap(nltk, instructions_util)
    import langdetect  # type: ignore[import-untyped,import-not-found,unused-ignore]  # the checkers' own dependency

    langdetect.DetectorFactory.seed = 0
    return utils


def close_nltk_gap(nltk: Any, util: Any) -> list[str]:
    """Fall back where NLTK's punkt data is missing; the fallbacks taken."""
    taken = []
    try:
        util.count_sentences("One. Two.")
    except LookupError:
        util.count_sentences = _regex_sentence_count(util)
        taken.append("count_sentences: regex splitter")
    try:
        nltk.word_tokenize("One. Two.")
    except LookupError:
        util.nltk = _PreserveLine(nltk)
        taken.append("word_tokenize: preserve_line=True")
    return taken


def _regex_sentence_count(util: Any) -> Any:
    def count_sentences(text: str) -> int:
        return len(util.split_into_sentences(text))

    return count_sentences


class _PreserveLine:
    """The nltk module as the checkers see it, but `word_tokenize` skips the punkt sentence split."""

    def __init__(self, nltk: Any) -> None:
        self._nltk = nltk

    def __getattr__(self, name: str) -> Any:
        return getattr(self._nltk, name)

    def word_tokenize(self, text: str, language: str = "english") -> list[str]:
        return list(self._nltk.word_tokenize(text, language=language, preserve_line=True))


@contextlib.contextmanager
def _no_downloads(nltk: Any) -> Iterator[None]:
    """No `nltk.download` (a network call) while lm-eval's module imports, and none of its printing."""
    original = nltk.download
    nltk.download = lambda *args, **kwargs: False
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        nltk.download = original
