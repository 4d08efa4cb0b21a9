"""Hostile request bodies over real HTTP: deep nesting and text that is not valid Unicode.

Each must be a 400 in the OpenAI envelope naming the field, before any
engine is called, for mixtures and pass-through alike, with no traceback in
the gateway's log; the nesting limit and the Unicode check are also pinned
down on `decode_json` itself.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from moa_local.api.request_body import MAX_DEPTH, decode_json
from moa_local.errors import InvalidRequest
from tests.support.gateway_fixtures import HELLO, Stack, answer, error_of, post

SURROGATE = "\ud800"  # a lone high surrogate: json.dumps writes it as the escape \ud800


def _bodies(model: str) -> list[tuple[dict[str, Any], str]]:
    """(body, the param its 400 must name), a lone surrogate in each text field in turn."""
    system = [{"role": "system", "content": f"be brief {SURROGATE}"}, *HELLO]
    parts = [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": SURROGATE}]}]
    return [
        ({"model": model, "messages": [{"role": "user", "content": f"hi {SURROGATE}"}]}, "messages.0.content"),
        ({"model": model, "messages": system}, "messages.0.content"),
        ({"model": model, "messages": parts}, "messages.0.content.1.text"),
        ({"model": model, "messages": [{"role": "user", "content": "hi", "name": SURROGATE}]}, "messages.0.name"),
        ({"model": model, "messages": HELLO, "stop": SURROGATE}, "stop"),
        ({"model": model, "messages": HELLO, "stop": ["zz", SURROGATE]}, "stop.1"),
        ({"model": model, "messages": HELLO, "user": f"user-{SURROGATE}"}, "user"),
        ({"model": model + SURROGATE, "messages": HELLO}, "model"),
        ({"model": model, "messages": HELLO, "metadata": {"tag": SURROGATE}}, "metadata.tag"),
    ]


CASES = [pytest.param(body, param, id=f"{model}-{param}") for model in ("mix", "p1") for body, param in _bodies(model)]


@pytest.mark.parametrize(("body", "param"), CASES)
def test_a_lone_surrogate_in_any_text_field_is_400_naming_it(
    stack: Stack, caplog: pytest.LogCaptureFixture, body: dict[str, Any], param: str
) -> None:
    caplog.set_level(logging.INFO)
    response = post(stack.gw, body, headers={"x-request-id": "surrogate-1"})
    assert response.status_code == 400, response.text
    error = error_of(response)
    assert (error["type"], error["param"]) == ("invalid_request_error", param)
    assert "not valid Unicode" in error["message"] and response.headers["x-request-id"] == "surrogate-1"
    assert all(f.chat_bodies() == [] for f in stack.fakes)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


@pytest.mark.parametrize("model", ["mix", "p1"])
def test_raw_surrogate_and_non_utf8_bytes_are_400_naming_the_field(stack: Stack, model: str) -> None:
    for raw in (b"\xed\xa0\x80", b"\xff"):  # a surrogate encoded as if it were UTF-8; a byte UTF-8 never has
        body = b'{"model": "%s", "messages": [{"role": "user", "content": "hi %s"}]}' % (model.encode(), raw)
        response = post(stack.gw, body)
        assert response.status_code == 400, (raw, response.text)
        assert error_of(response)["param"] == "messages.0.content"
    assert all(f.chat_bodies() == [] for f in stack.fakes)
    # The gateway is none the worse for it.
    reply = stack.gw.client().chat.completions.create(model=model, messages=HELLO)
    assert reply.choices[0].message.content == answer("agg-model" if model == "mix" else "p1-model", "hello")


def _nested(levels: int) -> str:
    return "[" * levels + "]" * levels


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ('{"model": "mix", "messages": [{"role": "user", "content": "hi"}], "metadata": {"a": %s}}', "metadata.a"),
        ('{"model": "p1", "messages": [{"role": "user", "content": %s}]}', "messages.0.content"),
        ('{"model": "mix", "messages": %s}', "messages"),
    ],
    ids=["metadata", "content", "messages"],
)
@pytest.mark.parametrize("levels", [990, 2000, MAX_DEPTH + 1])  # json itself gives up near 1000
def test_deep_nesting_is_400_naming_the_field(
    stack: Stack, caplog: pytest.LogCaptureFixture, body: str, param: str, levels: int
) -> None:
    caplog.set_level(logging.INFO)
    response = post(stack.gw, (body % _nested(levels)).encode())
    assert response.status_code == 400, response.text
    error = error_of(response)
    assert error["param"].startswith(param + ".") and f"nested deeper than {MAX_DEPTH}" in error["message"]
    assert all(f.chat_bodies() == [] for f in stack.fakes)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


def test_decode_json_takes_up_to_the_depth_limit() -> None:
    depth_limit = {"a": json.loads(_nested(MAX_DEPTH - 1))}  # the object is one level, the lists the rest
    assert decode_json(json.dumps(depth_limit).encode()) == depth_limit
    with pytest.raises(InvalidRequest) as caught:
        decode_json(json.dumps({"a": {"b": json.loads(_nested(MAX_DEPTH - 1))}}).encode())
    assert caught.value.param == "a.b" + ".0" * (MAX_DEPTH - 2)
    # Brackets inside strings are text, not nesting.
    assert decode_json(json.dumps({"a": "[" * 1000}).encode()) == {"a": "[" * 1000}


def test_decode_json_keeps_valid_text() -> None:
    body = '{"a": "\\ud83d\\ude00 gr\\u00fc\\u00dfe", "b": "\\\\ud800 is how it is written", "c": "ok ✓"}'
    assert decode_json(body.encode()) == {"a": "😀 grüße", "b": "\\ud800 is how it is written", "c": "ok ✓"}
    assert decode_json("\ufeff{}".encode()) == {}  # a UTF-8 byte order mark is tolerated
    with pytest.raises(InvalidRequest) as caught:
        decode_json(b'{"ok": 1, "bad\xff": 2}')
    assert caught.value.param == "bad\udcff"  # the key as received, its undecodable byte escaped
