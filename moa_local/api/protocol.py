"""The chat-completions request as the gateway accepts it, validated once.

Fields that moa-local honours are typed; fields that would change the
meaning of the answer and that it cannot honour (tools, n > 1, logprobs,
response formats, ...) are refused with a 400 naming the field rather than
silently ignored. Fields that change nothing when left at their neutral
value (`n: 1`, `logprobs: false`, penalties of 0) are accepted.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from moa_local.api.request_body import decode_json
from moa_local.errors import InvalidRequest, PayloadTooLarge
from moa_local.mixture.events import Done
from moa_local.mixture.spec import Overrides

ROLES = ("system", "developer", "user", "assistant")
# Accepted and ignored: they carry no meaning for the answer.
IGNORED = {"metadata", "store", "service_tier", "parallel_tool_calls", "stream_options", "prompt_cache_key"}
# Accepted only at their neutral value.
NEUTRAL: dict[str, tuple[Any, ...]] = {
    "n": (1, None),
    "logprobs": (False, None),
    "top_logprobs": (0, None),
    "presence_penalty": (0, 0.0, None),
    "frequency_penalty": (0, 0.0, None),
    "logit_bias": (None, {}),
    "tools": (None, []),
    "tool_choice": (None, "none"),
    "functions": (None, []),
    "function_call": (None, "none"),
    "response_format": (None, {"type": "text"}),
}


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None

    @field_validator("content")
    @classmethod
    def _text_only(cls, value: str | list[dict[str, Any]] | None) -> str | list[dict[str, Any]] | None:
        if isinstance(value, list):
            for part in value:
                if part.get("type") != "text" or not isinstance(part.get("text"), str):
                    raise ValueError("only text content parts are supported")
        return value

    def as_message(self) -> dict[str, Any]:
        content = self.content
        if isinstance(content, list):
            content = "".join(str(part["text"]) for part in content)
        role = "system" if self.role == "developer" else self.role
        return {"role": role, "content": content or ""}


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)
    include_usage: bool = False


class MoaOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    trace: bool = False


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    user: str | None = None
    moa: MoaOptions | None = None

    @field_validator("stop")
    @classmethod
    def _few_stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > 4:
            raise ValueError("at most 4 stop sequences")
        return value

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    @property
    def wants_trace(self) -> bool:
        return bool(self.moa and self.moa.trace)

    def conversation(self) -> list[dict[str, Any]]:
        return [message.as_message() for message in self.messages]

    def overrides(self) -> Overrides:
        stop = tuple(self.stop) if isinstance(self.stop, list) else self.stop
        return Overrides(
            temperature=self.temperature, top_p=self.top_p, max_tokens=self.max_completion_tokens or self.max_tokens,
            stop=stop, seed=self.seed, user=self.user,
        )  # fmt: skip


def parse_chat_request(body: bytes, max_bytes: int) -> ChatRequest:
    if len(body) > max_bytes:
        raise PayloadTooLarge(f"request body is {len(body)} bytes; the limit is {max_bytes}")
    raw = decode_json(body)
    if not isinstance(raw, dict):
        raise InvalidRequest("request body must be a JSON object")
    for key, value in raw.items():
        if key in NEUTRAL and value not in NEUTRAL[key]:
            raise InvalidRequest(f"'{key}' is not supported by moa-local (got {json.dumps(value)[:80]})", param=key)
    try:
        request = ChatRequest.model_validate(raw)
    except ValidationError as exc:
        error = exc.errors()[0]
        param = ".".join(str(part) for part in error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "missing":
            raise InvalidRequest(f"'{param}' is required", param=param) from None
        if error["type"] == "literal_error" and param.endswith("role"):
            message = f"role must be one of {', '.join(ROLES)}"
        got = json.dumps(error.get("input"), default=str)[:80]
        raise InvalidRequest(f"{param}: {message} (got {got})", param=param) from None
    unknown = sorted(set(request.model_extra or {}) - IGNORED - set(NEUTRAL))
    if unknown:
        raise InvalidRequest(f"unsupported field '{unknown[0]}'", param=unknown[0])
    return request


def parse_chat_body(body: dict[str, Any], max_bytes: int) -> ChatRequest:
    """A request already decoded from JSON (a batch line's `body`), checked exactly as `parse_chat_request` does."""
    return parse_chat_request(json.dumps(body, ensure_ascii=False).encode(), max_bytes)


def completion_object(completion_id: str, chat: ChatRequest, done: Done, created: int) -> dict[str, Any]:
    """The `chat.completion` object of an answered request: the gateway's non-streamed body, a batch line's body."""
    payload: dict[str, Any] = {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": chat.model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": done.answer},
                "logprobs": None,
                "finish_reason": done.finish_reason or "stop",
            }
        ],
        "usage": done.trace.usage().as_openai(),
    }
    if chat.wants_trace:
        payload["moa"] = done.trace.as_dict()
    return payload
