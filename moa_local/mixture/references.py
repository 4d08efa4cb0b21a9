"""How a layer's answers reach the next layer, and how prompts fit a window.

References are injected the way the method's reference code does it: one
system message placed first, holding the synthesis instruction and the
numbered answers `1. ...`, `2. ...`. An existing leading system message
keeps its text and gets the block appended. An agent's own `system_prompt`
comes before both.

A request whose conversation cannot fit the aggregator's window even with
the fewest references it can get and the shortest answer is refused before
any call (`check_fits`, 413): the proposers' work would be wasted.

Token counts here are estimates (characters / CHARS_PER_TOKEN, erring
high) so that no tokenizer round trip is needed; the engine still refuses
anything that really does not fit, and that error reaches the caller.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from moa_local.errors import InvalidRequest, PayloadTooLarge

Message = dict[str, Any]

DEFAULT_REFERENCE_PROMPT = (
    "Several AI assistants have answered the user's latest message; their answers are listed below. "
    "Treat them as material, not as authority: any of them may be wrong, incomplete or biased. "
    "Weigh them critically, keep what is correct and useful, fix what is wrong, and write one answer "
    "of your own that is accurate, complete and well structured. Do not just repeat or pick one of "
    "them, and do not mention that you were given other answers.\n\nAnswers:"
)
CHARS_PER_TOKEN = 3.0  # English averages ~4; 3 errs towards overestimating
TOKENS_PER_MESSAGE = 4  # role markers and separators of chat templates
MIN_REFERENCE_TOKENS = 16
MIN_ANSWER_TOKENS = 16
TRIM_MARK = " [...]"


def estimate_tokens(text: str) -> int:
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def estimate_messages(messages: Sequence[Message]) -> int:
    return sum(estimate_tokens(_text(m.get("content"))) + TOKENS_PER_MESSAGE for m in messages)


def reference_block(references: Sequence[str], instruction: str | None, numbered: bool = True) -> str:
    """The instruction, then the answers numbered `1. ...`; or (`numbered` False) entries that name their answer."""
    if numbered:
        listed = "\n".join(f"{i}. {text}" for i, text in enumerate(references, start=1))
    else:
        listed = "\n\n".join(references)
    return f"{instruction or DEFAULT_REFERENCE_PROMPT}\n{listed}"


def build_messages(
    conversation: Sequence[Message],
    references: Sequence[str] = (),
    instruction: str | None = None,
    system_prompt: str | None = None,
    numbered: bool = True,
) -> list[Message]:
    """The messages one agent receives: its system prompt, the conversation, the references."""
    parts: list[str] = [system_prompt] if system_prompt else []
    rest = list(conversation)
    if rest and rest[0].get("role") == "system":
        parts.append(_text(rest.pop(0).get("content")))
    if references:
        parts.append(reference_block(references, instruction, numbered))
    if not parts:
        return rest
    return [{"role": "system", "content": "\n\n".join(parts)}, *rest]


def check_fits(
    conversation: Sequence[Message],
    references: int,
    *,
    instruction: str | None,
    system_prompt: str | None,
    context_window: int | None,
    endpoint: str,
    numbered: bool = True,
) -> None:
    """Refuse (413) what cannot fit `endpoint`'s window with `references` (empty) references and the shortest answer.

    `fit` would refuse the same messages later; this asks before anything runs.
    """
    if context_window is None:
        return
    base = estimate_messages(build_messages(conversation, [""] * references, instruction, system_prompt, numbered))
    if context_window - base < MIN_ANSWER_TOKENS:
        raise PayloadTooLarge(
            f"messages are about {base} tokens; endpoint '{endpoint}' has a context window of {context_window} "
            f"tokens, and at least {MIN_ANSWER_TOKENS} of them are kept for the answer",
            param="messages",
        )


@dataclass(frozen=True)
class Fitted:
    messages: list[Message]
    max_tokens: int | None
    note: str | None


def fit(
    conversation: Sequence[Message],
    references: Sequence[str],
    *,
    instruction: str | None,
    system_prompt: str | None,
    max_tokens: int | None,
    context_window: int | None,
    endpoint: str,
    numbered: bool = True,
) -> Fitted:
    """Build an agent's messages inside its context window, or refuse (400).

    The conversation itself is never cut: if it cannot fit, the request is
    refused naming the endpoint. References are trimmed evenly (the longest
    first) and `max_tokens` lowered only as far as the window forces.
    """
    if context_window is None:
        return Fitted(build_messages(conversation, references, instruction, system_prompt, numbered), max_tokens, None)
    # Everything but the references' own text: numbering, joins, and the system message they may add.
    base = estimate_messages(build_messages(conversation, [""] * len(references), instruction, system_prompt, numbered))
    room = context_window - base
    if room < MIN_ANSWER_TOKENS:
        raise InvalidRequest(
            f"messages are about {base} tokens; endpoint '{endpoint}' has a context window of "
            f"{context_window} tokens",
            param="messages",
        )
    notes: list[str] = []
    if references:
        reserve = max_tokens or room // 2
        reserve = max(MIN_ANSWER_TOKENS, min(reserve, room - MIN_REFERENCE_TOKENS * len(references)))
        trimmed = trim_evenly(references, room - reserve)
        if trimmed != list(references):
            notes.append(f"references trimmed to fit the {context_window}-token window")
        references = trimmed
        room -= sum(estimate_tokens(text) for text in references)
    if max_tokens is not None and max_tokens > room:
        notes.append(f"max_tokens lowered from {max_tokens} to {max(room, MIN_ANSWER_TOKENS)} to fit the window")
        max_tokens = max(room, MIN_ANSWER_TOKENS)
    messages = build_messages(conversation, references, instruction, system_prompt, numbered)
    return Fitted(messages, max_tokens, "; ".join(notes) or None)


def trim_evenly(texts: Sequence[str], budget_tokens: int) -> list[str]:
    """Cut the longest texts first so that all share the budget fairly (water-filling)."""
    sizes = [estimate_tokens(t) for t in texts]
    if sum(sizes) <= budget_tokens:
        return list(texts)
    cap = _water_level(sizes, budget_tokens)
    out = []
    for text, size in zip(texts, sizes, strict=True):
        if size <= cap:
            out.append(text)
        else:
            keep = max(0, int(cap * CHARS_PER_TOKEN) - len(TRIM_MARK))
            out.append(text[:keep].rstrip() + TRIM_MARK)
    return out


def _water_level(sizes: Sequence[int], budget: int) -> int:
    remaining, left = budget, len(sizes)
    for size in sorted(sizes):
        share = remaining // left
        if size > share:
            return max(share, 1)
        remaining -= size
        left -= 1
    return max(sizes)


def _text(content: Any) -> str:
    """Message content as text: a string, or the text parts of a content list."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return str(content)
