"""Scoring against hand-checked items: IFEval per instruction family, math extraction, judge parsing."""

from __future__ import annotations

import math
import random
from types import SimpleNamespace
from typing import Any

import pytest

from moa_local.evaluation.alpaca import chat_messages
from moa_local.evaluation.arithmetic import extract_answer
from moa_local.evaluation.data import parse_templates
from moa_local.evaluation.errors import EvalError
from moa_local.evaluation.ifeval import close_nltk_gap, score_response
from moa_local.evaluation.judge import parse_preference, parse_rating
from moa_local.evaluation.suite import Item
from tests.evaluation.cached_data import ALPACA_TEMPLATE, TEMPLATES

# One instruction per IFEval family: (id, kwargs, a response that follows it, one that does not).
FAMILIES = [
    ("keywords:existence", {"keywords": ["banana"]}, "I like banana bread", "I like apples"),
    ("language:response_language", {"language": "de"},
     "Heute gehen wir mit unseren Freunden in den großen Park und essen dort zusammen zu Mittag.",
     "Today we are going to the big park with our friends and we will have lunch there together."),
    ("length_constraints:number_words", {"relation": "less than", "num_words": 5}, "one two three",
     "one two three four five six"),
    ("length_constraints:number_sentences", {"relation": "at least", "num_sentences": 3}, "One. Two. Three.",
     "Only one sentence here."),
    ("detectable_content:postscript", {"postscript_marker": "P.S."}, "Hello.\nP.S. Bye.", "Hello."),
    ("detectable_format:number_bullet_lists", {"num_bullets": 2}, "* one\n* two", "* one"),
    ("combination:repeat_prompt", {"prompt_to_repeat": "Say hi"}, "Say hi. Hi!", "Hi!"),
    ("startend:quotation", {}, '"Hello there"', "Hello there"),
    ("change_case:capital_word_frequency", {"capital_frequency": 2, "capital_relation": "at least"},
     "HELLO BIG world", "Hello big world"),  # the checker's word_tokenize, without punkt_tab
    ("punctuation:no_comma", {}, "a b c", "a, b, c"),
]  # fmt: skip


@pytest.mark.parametrize(("instruction", "kwargs", "good", "bad"), FAMILIES, ids=[f[0] for f in FAMILIES])
def test_ifeval_checker_passes_the_good_answer_and_fails_the_bad(
    instruction: str, kwargs: dict[str, Any], good: str, bad: str
) -> None:
    pytest.importorskip("lm_eval", reason="the ifeval suite needs the eval extra")
    item = Item("ifeval-1", ("the prompt",), None, {"key": 1, "instruction_id_list": [instruction], "kwargs": [kwargs]})
    assert score_response(item, good).scores["prompt_strict"] == (1.0, 1.0)
    assert score_response(item, bad).scores["prompt_strict"] == (0.0, 1.0)


def test_ifeval_language_detection_gives_one_verdict_per_text() -> None:
    # langdetect samples at random unless seeded; this text came out as 4 different languages in 30 unseeded runs.
    pytest.importorskip("lm_eval", reason="the ifeval suite needs the eval extra")
    data = {"key": 1, "instruction_id_list": ["language:response_language"], "kwargs": [{"language": "sw"}]}
    item = Item("ifeval-1", ("p",), None, data)
    assert len({score_response(item, "Anime Tokyo sushi").scores["prompt_strict"] for _ in range(30)}) == 1


def test_ifeval_letter_that_is_not_a_letter_scores_the_same_every_time() -> None:
    # IFEval asks one prompt for the letter "#": the checker then draws a random letter (1 in 13 here is a or b).
    pytest.importorskip("lm_eval", reason="the ifeval suite needs the eval extra")
    kwargs = {"let_relation": "at least", "letter": "#", "let_frequency": 4}
    item = Item("ifeval-1", ("p",), None, {"key": 1, "instruction_id_list": ["keywords:letter_frequency"],
                                             "kwargs": [kwargs]})  # fmt: skip
    assert len({score_response(item, "aaaa bbbb").scores["prompt_strict"] for _ in range(60)}) == 1


def test_ifeval_scoring_leaves_the_callers_random_sequence_alone() -> None:
    pytest.importorskip("lm_eval", reason="the ifeval suite needs the eval extra")
    kwargs = {"let_relation": "at least", "letter": "#", "let_frequency": 4}  # a checker that draws a letter
    item = Item("ifeval-1", ("p",), None, {"key": 1, "instruction_id_list": ["keywords:letter_frequency"],
                                             "kwargs": [kwargs]})  # fmt: skip
    random.seed(7)
    expected = [random.random() for _ in range(3)]
    random.seed(7)
    drawn = [random.random()]
    score_response(item, "aaaa bbbb")
    drawn += [random.random() for _ in range(2)]
    assert drawn == expected


def test_ifeval_loose_forgives_a_first_line_and_asterisks() -> None:
    pytest.importorskip("lm_eval", reason="the ifeval suite needs the eval extra")
    item = Item("ifeval-1", ("p",), None, {"key": 1, "instruction_id_list": ["startend:quotation"], "kwargs": [{}]})
    scores = score_response(item, 'Sure, here it is:\n"Hello there"').scores
    assert scores["prompt_strict"] == (0.0, 1.0) and scores["prompt_loose"] == (1.0, 1.0)


def test_nltk_gap_falls_back_to_the_regex_splitter_and_preserve_line() -> None:
    """Stand-ins for nltk and the checker module whose punkt lookups fail, as they do offline."""

    def missing(*args: Any, **kwargs: Any) -> Any:
        if kwargs.get("preserve_line"):
            return ["tokens", "without", "punkt"]
        raise LookupError("Resource punkt_tab not found")

    nltk = SimpleNamespace(word_tokenize=missing, tokenize="the real tokenize module")
    util = SimpleNamespace(count_sentences=missing, split_into_sentences=lambda text: text.split(". "), nltk=nltk)
    assert close_nltk_gap(nltk, util) == ["count_sentences: regex splitter", "word_tokenize: preserve_line=True"]
    assert util.count_sentences("One. Two. Three") == 3
    assert util.nltk.word_tokenize("One. Two.") == ["tokens", "without", "punkt"]
    assert util.nltk.tokenize == "the real tokenize module"  # everything else is nltk's own


def test_nltk_gap_left_alone_when_the_data_is_there() -> None:
    nltk = SimpleNamespace(word_tokenize=lambda text, **kw: text.split())
    util = SimpleNamespace(count_sentences=lambda text: 2, nltk=nltk)
    assert close_nltk_gap(nltk, util) == []
    assert util.nltk is nltk


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("<answer>1,687.5</answer>", "1687.5"),  # thousands separator removed
        ("Work: 3 + 4 = 7.\n<answer>7</answer>", "7"),
        ("<answer>3</answer> no, wait: <answer>4</answer>", "4"),  # the last tagged answer
        ("She spent 33 minutes on puzzles and 24 on riddles, so 57.", "57"),  # no tags: the last number
        ("It costs $1,200 in total, plus 3", "3"),
        ("The temperature fell to -5 degrees", "-5"),
        ("<answer>48 calories</answer>", "48 calories"),  # the verifier reads the first number
        ("I do not know.", None),
    ],
)
def test_math_answer_extraction(reply: str, expected: str | None) -> None:
    assert extract_answer(reply) == expected


def test_math_verifier_takes_full_reward_only() -> None:
    pytest.importorskip("reasoning_gym", reason="the math suite needs the eval extra")
    from moa_local.evaluation.arithmetic import verify

    assert verify("1687.5", "1687.5") and verify("48.0", "48") and verify("48 calories", "48")
    assert not verify("47", "48") and not verify(None, "48")  # 0.01 for a wrong number is a fail


@pytest.mark.parametrize(
    ("judgment", "rating"),
    [
        ("Helpful and correct. Rating: [[8]]", 8.0),
        ("Rating: [[7.5]] then [[2]]", 7.5),  # the first
        ("Good answer, [6]", 6.0),  # FastChat's backup pattern
        ("Rating: [[11]]", None),  # off the scale
        ("Rating: 8/10", None),
        ("", None),
    ],
)
def test_mt_bench_rating(judgment: str, rating: float | None) -> None:
    assert parse_rating(judgment) == rating


def judgment(token: str, top: list[tuple[str, float]] | None) -> dict[str, Any]:
    """A chat completion as vLLM sends it with `logprobs` and `top_logprobs` (or without, when `top` is None)."""
    tops = [{"token": t, "logprob": lp} for t, lp in top or ()]
    logprobs = None if top is None else {"content": [{"token": token, "logprob": top[0][1], "top_logprobs": tops}]}
    return {"choices": [{"message": {"role": "assistant", "content": token}, "logprobs": logprobs}]}


def test_alpaca_preference_is_weighted_by_log_probabilities() -> None:
    body = judgment("M", [("M", math.log(0.6)), ("m", math.log(0.2)), ("The", math.log(0.1))])
    preference, weighted = parse_preference(body)
    assert weighted and preference == pytest.approx(0.25)  # 0.2 / (0.2 + 0.6): other tokens do not count
    assert parse_preference(judgment("m", [("m", -0.01), ("Both", -5.0)])) == (1.0, True)  # M absent: probability 0


def test_alpaca_preference_without_log_probabilities_uses_the_token() -> None:
    assert parse_preference(judgment("m", None)) == (1.0, False)
    assert parse_preference(judgment(" M\n", None)) == (0.0, False)
    assert parse_preference(judgment("Output (a)", None)) == (None, False)
    assert parse_preference(judgment("The", [("The", -0.1), ("Both", -2.0)])) == (None, False)
    assert parse_preference(None) == (None, False)


def test_mt_bench_templates_are_read_without_running_the_source() -> None:
    templates = parse_templates(TEMPLATES, "mtbench.py")  # it also holds a call that must not run
    assert templates["single_math_v1"]["system_prompt"] == "You judge math."
    with pytest.raises(EvalError) as caught:
        parse_templates("single_v1 = {'system_prompt': 's', 'prompt_template': 't'}", "mtbench.py")
    assert str(caught.value) == (
        "mtbench.py: no judge prompt single_math_v1, single_v1_multi_turn, single_math_v1_multi_turn in it"
    )


def test_alpaca_template_becomes_messages_and_placeholders_in_answers_stay_put() -> None:
    values = {"{instruction}": "Say hi", "{output_1}": "I wrote {output_2} here", "{output_2}": "hi"}
    messages = chat_messages(ALPACA_TEMPLATE, values)
    assert [m["role"] for m in messages] == ["system", "user"]
    assert 'm: """I wrote {output_2} here"""' in messages[1]["content"] and 'M: """hi"""' in messages[1]["content"]
