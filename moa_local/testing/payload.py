"""The fake engine's payloads: replies, usage, and the JSON and SSE bodies carrying them.

A `Completion` is computed once per chat request from the request body and
a `Behavior` snapshot; it then renders the `chat.completion` body or the
`chat.completion.chunk` SSE events in the shapes vLLM and OpenAI send.

Left out on purpose: tokenization (a token is a whitespace-separated word,
so `prompt_tokens` counts words in the messages), sampling (answers are
deterministic), tools and logprobs.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from moa_local.testing.behavior import Behavior

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    429: "rate_limit_error",
    503: "service_unavailable",
}


@dataclass(frozen=True)
class Completion:
    """The choices of one chat completion (`replies[i]` is choice i as tokens) and its usage."""

    head: dict[str, Any]  # id, created, model
    replies: list[list[str]]
    reasons: list[str]  # finish_reason per choice: "stop" or "length"
    usage: dict[str, int]
    stream: bool
    include_usage: bool

    @classmethod
    def build(cls, behavior: Behavior, req: dict[str, Any], number: int, default_model: str) -> Completion:
        """`req` is the request body (with a `messages` list); `number` counts chat requests."""
        model = str(req.get("model") or default_model)
        cap = req.get("max_completion_tokens") or req.get("max_tokens")
        prompt = last_user_text(req["messages"])
        n = req.get("n") or 1
        replies = [
            render(behavior, model=model, request=number, index=i, prompt=prompt)
            for i in range(n if isinstance(n, int) else 1)
        ]
        reasons = ["length" if isinstance(cap, int) and len(r) > cap else "stop" for r in replies]
        if isinstance(cap, int):
            replies = [r[:cap] for r in replies]
        prompt_tokens = prompt_words(req["messages"])
        completion = sum(len(r) for r in replies)
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": prompt_tokens + completion,
        }
        options = req.get("stream_options")
        return cls(
            head={"id": f"chatcmpl-fake-{number}", "created": int(time.time()), "model": model},
            replies=replies,
            reasons=reasons,
            usage=usage,
            stream=bool(req.get("stream")),
            include_usage=isinstance(options, dict) and bool(options.get("include_usage")),
        )

    @property
    def steps(self) -> int:
        """How many content chunks the longest choice takes."""
        return max(map(len, self.replies), default=0)

    def completion_body(self) -> bytes:
        choices = [
            {"index": i, "message": {"role": "assistant", "content": "".join(r)}, "logprobs": None, "finish_reason": f}
            for i, (r, f) in enumerate(zip(self.replies, self.reasons, strict=True))
        ]
        return json.dumps({**self.head, "object": "chat.completion", "choices": choices, "usage": self.usage}).encode()

    def chunks(self) -> ChunkWriter:
        return ChunkWriter(self)


class ChunkWriter:
    """SSE events of one streamed completion; built from strings, as this is the hot path."""

    def __init__(self, completion: Completion) -> None:
        self.completion = completion
        head = json.dumps({**completion.head, "object": "chat.completion.chunk"})
        self._prefix = "data: " + head[:-1] + ', "choices": [{"index": '

    def role(self, index: int) -> str:
        return f'{self._prefix}{index}, "delta": {{"role": "assistant", "content": ""}}, "finish_reason": null}}]}}\n\n'

    def content(self, index: int, piece: str) -> str:
        return f'{self._prefix}{index}, "delta": {{"content": {json.dumps(piece)}}}, "finish_reason": null}}]}}\n\n'

    def finish(self, index: int) -> str:
        reason = self.completion.reasons[index]
        return f'{self._prefix}{index}, "delta": {{}}, "finish_reason": "{reason}"}}]}}\n\n'

    def tail(self) -> str:
        """The finish events, the usage event if asked for (empty `choices`), and `[DONE]`."""
        completion = self.completion
        events = [self.finish(i) for i in range(len(completion.replies))]
        if completion.include_usage:
            usage = {**completion.head, "object": "chat.completion.chunk", "choices": [], "usage": completion.usage}
            events.append(f"data: {json.dumps(usage)}\n\n")
        events.append("data: [DONE]\n\n")
        return "".join(events)


def render(behavior: Behavior, *, model: str, request: int, index: int, prompt: str) -> list[str]:
    """The reply as tokens: words, each but the first with its leading space."""
    if behavior.reply is not None:
        text = behavior.reply
    else:
        words = " ".join(f"w{i}" for i in range(1, behavior.tokens + 1))
        text = behavior.template.format(model=model, words=words, request=request, index=index, prompt=prompt)
    parts = text.split()
    return parts[:1] + [" " + p for p in parts[1:]]


def message_text(message: object) -> str:
    """The text of one chat message: string content or the text parts of a list."""
    if not isinstance(message, dict):
        return ""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def prompt_words(messages: list[Any]) -> int:
    """A deterministic prompt token count: whitespace-separated words in all messages."""
    return sum(len(message_text(m).split()) for m in messages)


def last_user_text(messages: list[Any]) -> str:
    for m in reversed(messages):
        if isinstance(m, dict) and m.get("role") == "user":
            return message_text(m)
    return ""


def error_body(status: int, message: str) -> dict[str, Any]:
    """The OpenAI error envelope for a status."""
    kind = _ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": None, "code": status}}
