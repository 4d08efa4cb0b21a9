"""Reference injection (the paper's layout) and fitting prompts into a context window."""

from __future__ import annotations

import pytest

from moa_local.errors import InvalidRequest, PayloadTooLarge
from moa_local.mixture.references import (
    DEFAULT_REFERENCE_PROMPT,
    MIN_ANSWER_TOKENS,
    TRIM_MARK,
    build_messages,
    check_fits,
    estimate_messages,
    estimate_tokens,
    fit,
    reference_block,
    trim_evenly,
)

USER = [{"role": "user", "content": "What is 2 + 2?"}]


def test_reference_block_numbers_the_answers_in_order() -> None:
    assert reference_block(["four", "4", "IV"], "Combine these:") == "Combine these:\n1. four\n2. 4\n3. IV"


def test_default_instruction_is_used_when_none_is_configured() -> None:
    block = reference_block(["a"], None)
    assert block == f"{DEFAULT_REFERENCE_PROMPT}\n1. a"
    # The instruction asks for critical synthesis, as the method does.
    for word in ("wrong", "biased", "accurate", "complete", "well structured", "repeat"):
        assert word in DEFAULT_REFERENCE_PROMPT


def test_no_references_leaves_the_conversation_as_is() -> None:
    assert build_messages(USER) == USER
    assert build_messages(USER, []) is not USER  # a copy, never the caller's list


def test_references_become_one_leading_system_message() -> None:
    messages = build_messages(USER, ["four", "4"], "Combine:")
    assert messages == [{"role": "system", "content": "Combine:\n1. four\n2. 4"}, *USER]


def test_existing_system_message_is_kept_and_the_block_appended() -> None:
    conversation = [{"role": "system", "content": "Answer in French."}, *USER]
    messages = build_messages(conversation, ["quatre"], "Combine:")
    assert messages == [{"role": "system", "content": "Answer in French.\n\nCombine:\n1. quatre"}, *USER]
    assert conversation[0] == {"role": "system", "content": "Answer in French."}  # not mutated


def test_agent_system_prompt_comes_first() -> None:
    conversation = [{"role": "system", "content": "Answer in French."}, *USER]
    messages = build_messages(conversation, ["quatre"], "Combine:", system_prompt="You are terse.")
    assert messages[0] == {"role": "system", "content": "You are terse.\n\nAnswer in French.\n\nCombine:\n1. quatre"}
    assert messages[1:] == USER


def test_agent_system_prompt_without_references() -> None:
    assert build_messages(USER, (), None, "You are terse.") == [{"role": "system", "content": "You are terse."}, *USER]


def test_system_message_with_content_parts_is_read_as_text() -> None:
    conversation = [
        {"role": "system", "content": [{"type": "text", "text": "Be "}, {"type": "text", "text": "brief."}]}
    ]
    messages = build_messages([*conversation, *USER], ["x"], "I:")
    assert messages[0] == {"role": "system", "content": "Be brief.\n\nI:\n1. x"}


def test_multi_turn_history_is_kept_in_order() -> None:
    history = [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "the mixture's first answer"},
        {"role": "user", "content": "follow-up"},
    ]
    messages = build_messages(history, ["r1", "r2"], "I:")
    assert messages[0] == {"role": "system", "content": "S\n\nI:\n1. r1\n2. r2"}
    assert messages[1:] == history[1:]


def test_a_later_system_message_is_not_merged() -> None:
    conversation = [*USER, {"role": "system", "content": "late"}]
    messages = build_messages(conversation, ["r"], "I:")
    assert messages == [{"role": "system", "content": "I:\n1. r"}, *conversation]


# --- fitting into the context window ---


def test_no_window_means_no_fitting() -> None:
    fitted = fit(USER, ["a" * 10_000], instruction="I:", system_prompt=None, max_tokens=4000,
                 context_window=None, endpoint="e")  # fmt: skip
    assert fitted.messages == build_messages(USER, ["a" * 10_000], "I:")
    assert (fitted.max_tokens, fitted.note) == (4000, None)


def test_what_fits_is_left_alone() -> None:
    fitted = fit(USER, ["four", "4"], instruction="I:", system_prompt=None, max_tokens=100,
                 context_window=2048, endpoint="e")  # fmt: skip
    assert fitted.messages == build_messages(USER, ["four", "4"], "I:")
    assert (fitted.max_tokens, fitted.note) == (100, None)


def test_references_trimmed_evenly_longest_first() -> None:
    references = ["a" * 3000, "b" * 300, "c" * 1500]
    fitted = fit(USER, references, instruction="I:", system_prompt=None, max_tokens=200,
                 context_window=1000, endpoint="e")  # fmt: skip
    assert fitted.note == "references trimmed to fit the 1000-token window"
    assert fitted.max_tokens == 200
    block = fitted.messages[0]["content"]
    lines = block.split("\n")
    assert lines[0] == "I:"
    a, b, c = (line[3:] for line in lines[1:])
    assert b == "b" * 300  # the short one is kept whole
    assert a.endswith(TRIM_MARK) and c.endswith(TRIM_MARK)
    assert len(a) == len(c)  # the long ones share the rest equally
    assert a.startswith("a" * 100) and c.startswith("c" * 100)
    assert fitted.messages[1:] == USER


@pytest.mark.parametrize("system_prompt", [None, "P"])
@pytest.mark.parametrize("with_system_message", [False, True])
def test_fitted_prompt_and_answer_stay_inside_the_window(system_prompt: str | None, with_system_message: bool) -> None:
    system = [{"role": "system", "content": "S " * 50}] if with_system_message else []
    conversation = [*system, {"role": "user", "content": "q " * 100}]
    for window in (400, 700, 1000, 2048):
        for count in (1, 2, 3, 6):
            references = ["x" * (900 * (i + 1)) for i in range(count)]
            fitted = fit(conversation, references, instruction=None, system_prompt=system_prompt, max_tokens=300,
                         context_window=window, endpoint="e")  # fmt: skip
            assert fitted.max_tokens is not None
            assert estimate_messages(fitted.messages) + fitted.max_tokens <= window, (window, count)


def test_max_tokens_lowered_with_a_note() -> None:
    fitted = fit(USER, [], instruction=None, system_prompt=None, max_tokens=2000, context_window=100, endpoint="e")
    room = 100 - estimate_messages(USER)
    assert fitted.max_tokens == room
    assert fitted.note == f"max_tokens lowered from 2000 to {room} to fit the window"
    assert fitted.messages == USER


def test_max_tokens_none_stays_none() -> None:
    fitted = fit(USER, ["r"], instruction="I:", system_prompt=None, max_tokens=None, context_window=200, endpoint="e")
    assert (fitted.max_tokens, fitted.note) == (None, None)


def test_conversation_that_cannot_fit_is_refused_with_400() -> None:
    conversation = [{"role": "user", "content": "x" * 3000}]
    with pytest.raises(InvalidRequest) as caught:
        fit(conversation, [], instruction=None, system_prompt=None, max_tokens=20, context_window=100, endpoint="small")
    error = caught.value
    assert error.status == 400
    assert error.param == "messages"
    assert str(error) == (
        f"messages are about {estimate_messages(conversation)} tokens; "
        "endpoint 'small' has a context window of 100 tokens"
    )


@pytest.mark.parametrize("references", [0, 2])
def test_check_fits_refuses_with_413_exactly_where_fit_would(references: int) -> None:
    conversation = [{"role": "user", "content": "x" * 300}]
    base = estimate_messages(build_messages(conversation, [""] * references, None, "Be brief."))
    options = {"instruction": None, "system_prompt": "Be brief.", "endpoint": "agg"}
    check_fits(conversation, references, context_window=base + MIN_ANSWER_TOKENS, **options)  # just fits
    fit(conversation, [""] * references, max_tokens=None, context_window=base + MIN_ANSWER_TOKENS, **options)
    with pytest.raises(PayloadTooLarge) as caught:
        check_fits(conversation, references, context_window=base + MIN_ANSWER_TOKENS - 1, **options)
    assert caught.value.status == 413 and f"about {base} tokens; endpoint 'agg'" in str(caught.value)
    with pytest.raises(InvalidRequest):
        fit(conversation, [""] * references, max_tokens=None, context_window=base + MIN_ANSWER_TOKENS - 1, **options)
    check_fits(conversation, references, context_window=None, **options)  # no window: nothing to check


def test_conversation_is_never_cut_to_make_room_for_references() -> None:
    conversation = [{"role": "user", "content": "x" * 270}]  # ~94 tokens of a 128 window
    with pytest.raises(InvalidRequest):
        fit(conversation, ["r" * 600], instruction=None, system_prompt=None, max_tokens=20,
            context_window=128, endpoint="e")  # fmt: skip


def test_trim_evenly_water_filling() -> None:
    texts = ["a" * 90, "b" * 30, "c" * 60]  # 30, 10 and 20 tokens
    trimmed = trim_evenly(texts, 40)
    assert trimmed[1] == texts[1]
    assert [estimate_tokens(t) for t in trimmed] == [15, 10, 15]
    assert trimmed[0] == "a" * 39 + TRIM_MARK


def test_trim_evenly_keeps_what_fits() -> None:
    assert trim_evenly(["a", "b"], 10) == ["a", "b"]


def test_trim_evenly_when_all_are_long() -> None:
    trimmed = trim_evenly(["a" * 300, "b" * 600, "c" * 900], 90)
    assert [estimate_tokens(t) for t in trimmed] == [30, 30, 30]
    assert sum(estimate_tokens(t) for t in trimmed) <= 90
