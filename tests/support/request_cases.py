"""One request to fuzz the gateway with (`Case`), and the fields of a chat request, by dotted path.

A `Case` is one HTTP request (method, path, headers, body bytes) and, when
one request field is at fault, that field's name: a 4xx for it must name
it (its first dotted part) in the envelope's `param`. `with_value` builds
a good chat body with one field, nested or not, set to any value;
`type_grid` is every field with a value of every JSON type.

Left out on purpose: generating cases at random (`hostile_requests.py`)
and sending them (`fuzz_target.py`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

API_KEY = "sk-fuzz"
MIXTURE, PASSTHROUGH = "mix", "p1"
HELLO = [{"role": "user", "content": "hello"}]
BIG = 5 * 1024 * 1024  # "5 MB bodies"


@dataclass(frozen=True)
class Case:
    family: str
    method: str
    path: str
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    param: str | None = None  # the request field at fault, if one is
    note: str = ""
    chunked: bool = False  # send the body without a content length

    def describe(self) -> str:
        body = self.body[:160] + (b"..." if len(self.body) > 160 else b"")
        return f"[{self.family}] {self.method} {self.path} {self.note} param={self.param} body={body!r}"


def base_headers() -> dict[str, str]:
    return {"authorization": f"Bearer {API_KEY}", "content-type": "application/json"}


def chat(body: Any, family: str, param: str | None = None, note: str = "", **extra: Any) -> Case:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return Case(family, "POST", "/v1/chat/completions", data, base_headers(), param, note, **extra)


KINDS = ("null", "bool", "int", "float", "str", "list", "object")
# One representative per kind, for the exhaustive grid.
SAMPLE_OF_KIND: dict[str, Any] = {
    "null": None, "bool": True, "int": -3, "float": 0.5, "str": "x", "list": [1, "a"], "object": {"k": "v"},
}  # fmt: skip

# Every field of a chat request, nested ones by dotted path; a base body holds each path's containers.
FIELDS = (
    "model", "messages", "messages.0", "messages.0.role", "messages.0.content", "messages.0.name",
    "messages.0.content.0", "messages.0.content.0.type", "messages.0.content.0.text",
    "stream", "stream_options", "stream_options.include_usage", "max_tokens", "max_completion_tokens",
    "temperature", "top_p", "stop", "stop.0", "seed", "user", "moa", "moa.trace", "n", "logprobs",
    "top_logprobs", "presence_penalty", "frequency_penalty", "logit_bias", "tools", "tool_choice",
    "functions", "function_call", "response_format", "metadata", "store", "service_tier",
    "parallel_tool_calls", "prompt_cache_key", "not_a_field",
)  # fmt: skip
NUMERIC = ("max_tokens", "max_completion_tokens", "temperature", "top_p", "seed", "n", "top_logprobs",
           "presence_penalty", "frequency_penalty")  # fmt: skip
TEXT_FIELDS = ("model", "messages.0.content", "messages.0.content.0.text", "messages.0.name", "stop", "stop.0",
               "user", "system")  # fmt: skip


def base_body(path: str) -> dict[str, Any]:
    """A good request whose containers hold `path`."""
    body: dict[str, Any] = {"model": MIXTURE, "messages": [{"role": "user", "content": "hello"}]}
    if path.startswith("messages.0.content.0"):
        body["messages"][0]["content"] = [{"type": "text", "text": "hello"}]
    if path.startswith("stream_options"):
        body.update(stream=True, stream_options={"include_usage": True})
    if path.startswith("stop."):
        body["stop"] = ["zz"]
    if path.startswith("moa."):
        body["moa"] = {"trace": True}
    return body


def with_value(path: str, value: Any) -> dict[str, Any]:
    """A good body with the field at `path` set to `value`."""
    body = base_body(path)
    if path == "system":  # a system message's text
        body["messages"].insert(0, {"role": "system", "content": value})
        return body
    *parents, last = path.split(".")
    node: Any = body
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return body


def top(path: str) -> str:
    return "messages" if path == "system" else path.split(".")[0]


def type_grid() -> list[Case]:
    """Every field with a value of every JSON type (most of them wrong)."""
    return [
        chat(with_value(path, SAMPLE_OF_KIND[kind]), "wrong_types", top(path), f"{path}={kind}")
        for path in FIELDS
        for kind in KINDS
    ]
