"""The gateway over real loopback HTTP: the openai SDK (sync and async) against fake engines.

Each fake answers "<served model> re <last user message>: w1 w2 w3", so every
answer names its own request, and records what it was sent; assertions are
made on the SDK's view and on what the fakes saw. Engines and clients that
misbehave are in `test_gateway_fault.py`.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.support.fake_fixtures import FakeEngineFactory
from tests.support.gateway_fixtures import (
    HELLO,
    TEMPLATE,
    GatewayFactory,
    GatewayServer,
    Stack,
    answer,
    engine_usage,
    error_of,
    fake_config,
    mixture,
    moa_of,
    post,
    request_lines,
)

# --- mixture answers ---------------------------------------------------------------------------


def test_sync_client_gets_a_mixture_answer(stack: Stack) -> None:
    reply = stack.gw.client().chat.completions.create(model="mix", messages=HELLO)
    assert reply.object == "chat.completion" and reply.model == "mix" and reply.id.startswith("chatcmpl-")
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].message.content == answer("agg-model", "hello")
    assert reply.choices[0].finish_reason == "stop"
    assert (reply.model_extra or {}).get("moa") is None
    # Proposers were called once each, the aggregator got their three answers as references.
    assert len(stack.p1.chat_bodies()) == len(stack.p2.chat_bodies()) == len(stack.agg.chat_bodies()) == 1
    system = stack.agg.chat_bodies()[0]["messages"][0]
    assert system["role"] == "system"
    assert "1. " + answer("p1-model", "hello") in system["content"]
    assert "3. " + answer("p2-model", "hello") in system["content"]
    # usage sums every call made for the answer.
    assert reply.usage is not None
    prompt, completion = engine_usage(*stack.fakes)
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (prompt, completion)
    assert reply.usage.total_tokens == prompt + completion
    assert completion == 4 * 6  # four answers of six words


def test_sync_client_streams_a_mixture_answer_token_by_token(stack: Stack) -> None:
    chunks = list(stack.gw.client().chat.completions.create(model="mix", messages=HELLO, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [c.choices[0].delta.content for c in chunks[1:] if c.choices and c.choices[0].delta.content]
    assert pieces == ["agg-model", " re", " hello:", " w1", " w2", " w3"]
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks)
    assert {c.id for c in chunks} == {chunks[0].id} and {c.model for c in chunks} == {"mix"}
    assert {c.object for c in chunks} == {"chat.completion.chunk"}
    assert all("moa" not in (c.model_extra or {}) for c in chunks)


def test_stream_include_usage_adds_a_usage_chunk(stack: Stack) -> None:
    stream = stack.gw.client().chat.completions.create(
        model="mix", messages=HELLO, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert all(c.usage is None for c in chunks[:-1])
    usage = chunks[-1].usage
    assert (usage.prompt_tokens, usage.completion_tokens) == engine_usage(*stack.fakes)
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


async def test_async_client_streaming_and_not(stack: Stack) -> None:
    async with stack.gw.async_client() as client:
        reply = await client.chat.completions.create(model="mix", messages=[{"role": "user", "content": "async"}])
        assert reply.choices[0].message.content == answer("agg-model", "async")
        stream = await client.chat.completions.create(
            model="mix", messages=[{"role": "user", "content": "streamed"}], stream=True,
            stream_options={"include_usage": True},
        )  # fmt: skip
        text, usage = "", None
        async for chunk in stream:
            text += "".join(c.delta.content or "" for c in chunk.choices)
            usage = chunk.usage or usage
    assert text == answer("agg-model", "streamed")
    assert usage is not None and usage.completion_tokens == 4 * 6


def test_trace_adds_the_moa_object(stack: Stack) -> None:
    reply = stack.gw.client().chat.completions.create(model="mix", messages=HELLO, extra_body={"moa": {"trace": True}})
    moa = moa_of(reply)
    assert moa["model"] == "mix"
    [layer] = moa["layers"]
    assert layer["proposals_used"] == 3
    assert [(a["endpoint"], a["role"], a["status"], a["samples"]) for a in layer["agents"]] == [
        ("p1", "proposer", "ok", 1),
        ("p2", "proposer", "ok", 2),
    ]
    assert all(a["latency_s"] > 0 and a["ttft_s"] is not None and a["error"] is None for a in layer["agents"])
    aggregator = moa["aggregator"]
    assert (aggregator["endpoint"], aggregator["role"], aggregator["status"]) == ("agg", "aggregator", "ok")
    assert aggregator["completion_tokens"] == 6
    assert moa["usage"] == reply.usage.model_dump(include={"prompt_tokens", "completion_tokens", "total_tokens"})
    assert moa["duration_s"] >= moa["ttft_s"] > 0 and moa["overhead_s"] >= 0


@pytest.mark.parametrize("include_usage", [False, True])
def test_trace_rides_on_the_final_chunk_when_streaming(stack: Stack, include_usage: bool) -> None:
    stream = stack.gw.client().chat.completions.create(
        model="mix", messages=HELLO, stream=True, stream_options={"include_usage": include_usage},
        extra_body={"moa": {"trace": True}},
    )  # fmt: skip
    chunks = list(stream)
    assert all("moa" not in (c.model_extra or {}) for c in chunks[:-1])
    moa = moa_of(chunks[-1])
    assert [a["status"] for a in moa["layers"][0]["agents"]] == ["ok", "ok"]
    assert moa["aggregator"]["status"] == "ok"
    if include_usage:
        assert chunks[-1].usage is not None and moa["usage"]["total_tokens"] == chunks[-1].usage.total_tokens
    else:
        assert chunks[-1].choices[0].finish_reason == "stop"


def test_proposals_header_reports_each_layer(stack: Stack) -> None:
    client = stack.gw.client()
    raw = client.chat.completions.with_raw_response.create(model="mix", messages=HELLO)
    assert raw.headers["x-moa-proposals"] == "3"
    assert raw.headers["x-request-id"]
    raw = client.chat.completions.with_raw_response.create(model="deep", messages=HELLO, stream=True)
    assert raw.headers["x-moa-proposals"] == "2,1"
    assert raw.headers["content-type"].startswith("text/event-stream")
    assert "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices) == answer("agg-model", "hello")
    # The second layer saw the first layer's answers as references.
    second_layer = stack.p1.chat_bodies()[-1]
    assert "1. " + answer("p1-model", "hello") in second_layer["messages"][0]["content"]


def test_request_id_is_echoed_when_sane(stack: Stack) -> None:
    response = post(stack.gw, {"model": "mix", "messages": HELLO}, headers={"x-request-id": "abc-123"})
    assert response.status_code == 200 and response.headers["x-request-id"] == "abc-123"
    response = post(stack.gw, {"model": "mix", "messages": HELLO}, headers={"x-request-id": "bad id\twith space"})
    assert response.headers["x-request-id"] != "bad id\twith space"


# --- pass-through to an endpoint ---------------------------------------------------------------


def test_passthrough_to_an_endpoint(stack: Stack) -> None:
    raw = stack.gw.client().chat.completions.with_raw_response.create(model="p1", messages=HELLO, max_tokens=4)
    reply = raw.parse()
    assert reply.model == "p1" and reply.choices[0].message.content == "p1-model re hello: w1"
    assert reply.choices[0].finish_reason == "length"
    assert "x-moa-proposals" not in raw.headers
    [body] = stack.p1.chat_bodies()
    assert body["model"] == "p1-model" and body["messages"] == HELLO and body["max_tokens"] == 4
    assert "temperature" not in body  # the engine's default, not a proposer's setting
    assert stack.p2.chat_bodies() == [] and stack.agg.chat_bodies() == []
    assert reply.usage is not None
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == engine_usage(stack.p1) == (1, 4)


def test_passthrough_streams(stack: Stack) -> None:
    stream = stack.gw.client().chat.completions.create(
        model="agg", messages=HELLO, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert pieces == ["agg-model", " re", " hello:", " w1", " w2", " w3"]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 6
    assert {c.model for c in chunks} == {"agg"}
    assert stack.p1.chat_bodies() == [] and len(stack.agg.chat_bodies()) == 1


# --- request values ------------------------------------------------------------------------------


@pytest.mark.parametrize("cap", ["max_tokens", "max_completion_tokens"])
def test_request_values_reach_the_aggregator_only(stack: Stack, cap: str) -> None:
    reply = stack.gw.client().chat.completions.create(
        model="mix", messages=HELLO, temperature=1.1, top_p=0.5, stop=["zz", "yy"], seed=42, user="user-7",
        **{cap: 2},  # type: ignore[arg-type]
    )  # fmt: skip
    assert reply.choices[0].message.content == "agg-model re"
    assert reply.choices[0].finish_reason == "length"
    [agg] = stack.agg.chat_bodies()
    assert agg["max_tokens"] == 2 and agg["temperature"] == 1.1 and agg["top_p"] == 0.5
    assert agg["stop"] == ["zz", "yy"] and agg["seed"] == 42 and agg["user"] == "user-7"
    [p1] = stack.p1.chat_bodies()
    [p2] = stack.p2.chat_bodies()
    assert (p1["temperature"], p1["max_tokens"], p1.get("top_p"), p1.get("n")) == (0.7, 64, None, None)
    assert (p2["temperature"], p2["max_tokens"], p2["top_p"], p2["n"]) == (0.5, 32, 0.9, 2)
    for body in (p1, p2):
        assert not {"stop", "seed", "user", "max_completion_tokens"} & set(body)


def test_aggregator_keeps_its_configured_sampling_without_request_values(stack: Stack) -> None:
    stack.gw.client().chat.completions.create(model="mix", messages=HELLO)
    [agg] = stack.agg.chat_bodies()
    assert (agg["temperature"], agg["max_tokens"]) == (0.3, 128)
    assert not {"top_p", "stop", "seed", "user"} & set(agg)
    # A request's zero is a value, not "unset".
    stack.gw.client().chat.completions.create(model="mix", messages=HELLO, temperature=0, seed=0, stop="zz")
    assert (stack.agg.chat_bodies()[-1]["temperature"], stack.agg.chat_bodies()[-1]["seed"]) == (0, 0)
    assert stack.agg.chat_bodies()[-1]["stop"] == "zz"


def test_unicode_and_empty_answers_survive_streaming(stack: Stack) -> None:
    stack.agg.set(reply="Grüße ✓ 你好 \"quoted\" back\\slash")  # the fake splits on whitespace
    chunks = list(stack.gw.client().chat.completions.create(model="mix", messages=HELLO, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == 'Grüße ✓ 你好 "quoted" back\\slash'
    stack.agg.set(reply="")
    assert stack.gw.client().chat.completions.create(model="mix", messages=HELLO).choices[0].message.content == ""
    chunks = list(stack.gw.client().chat.completions.create(model="mix", messages=HELLO, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[-1].choices[0].finish_reason == "stop"


def test_multi_turn_history_reaches_proposers(stack: Stack) -> None:
    history: list[Any] = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "first answer"},
        {"role": "user", "content": [{"type": "text", "text": "second"}, {"type": "text", "text": " question"}]},
    ]
    reply = stack.gw.client().chat.completions.create(model="mix", messages=history)
    assert reply.choices[0].message.content == answer("agg-model", "second question")
    flat = [*history[:3], {"role": "user", "content": "second question"}]
    for proposer in (stack.p1, stack.p2):
        assert proposer.chat_bodies()[0]["messages"] == flat
    agg_messages = stack.agg.chat_bodies()[0]["messages"]
    assert agg_messages[1:] == flat[1:]
    # The references are appended to the conversation's own system message.
    assert agg_messages[0]["role"] == "system" and agg_messages[0]["content"].startswith("You are terse.\n\n")
    assert "1. " + answer("p1-model", "second question") in agg_messages[0]["content"]


def test_developer_role_counts_as_system(stack: Stack) -> None:
    messages: list[Any] = [{"role": "developer", "content": "Be brief."}, *HELLO]
    stack.gw.client().chat.completions.create(model="p1", messages=messages)
    assert stack.p1.chat_bodies()[0]["messages"] == [{"role": "system", "content": "Be brief."}, *HELLO]


def test_neutral_values_of_unsupported_fields_are_accepted(stack: Stack) -> None:
    body = {"model": "mix", "messages": HELLO, "n": 1, "logprobs": False, "tools": [], "presence_penalty": 0}
    assert post(stack.gw, body).status_code == 200


# --- the other routes ----------------------------------------------------------------------------


def test_models_lists_mixtures_and_endpoints(stack: Stack) -> None:
    models = stack.gw.client().models.list()
    assert [m.id for m in models] == ["mix", "deep", "p1", "p2", "agg"]
    assert {m.object for m in models} == {"model"} and {m.owned_by for m in models} == {"moa-local"}


def test_models_retrieve_one_by_name(stack: Stack) -> None:
    assert stack.gw.client().models.retrieve("mix").id == "mix"
    assert stack.gw.client().models.retrieve("p1").id == "p1"
    missing = stack.gw.http.get("/v1/models/nope")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "model_not_found" and "mix" in missing.json()["error"]["message"]


def test_health_ready_and_metrics(stack: Stack) -> None:
    gw = stack.gw
    assert gw.http.get("/health").json() == {"status": "ok"}
    gw.wait_for(lambda: gw.http.get("/ready").status_code == 200, what="ready")
    ready = gw.http.get("/ready").json()
    assert ready["ready"] is True and ready["mixtures"] == {"mix": True, "deep": True}
    gw.client().chat.completions.create(model="mix", messages=HELLO)
    gw.wait_idle()  # counted just after the answer went out
    metrics = gw.http.get("/metrics")
    assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
    assert re.search(r'moa_requests_total\{mixture="mix",outcome="ok"\} [1-9]', metrics.text)
    assert 'moa_endpoint_up{endpoint="agg"} 1.0' in metrics.text
    assert 'moa_agent_calls_total{endpoint="p2",outcome="ok",role="proposer"}' in metrics.text


def test_successful_requests_count_as_ok(stack: Stack) -> None:
    gw = stack.gw
    before = {o: gw.metric("moa_requests_total", mixture="mix", outcome=o) for o in ("ok", "cancelled")}
    gw.client().chat.completions.create(model="mix", messages=HELLO)
    list(gw.client().chat.completions.create(model="mix", messages=HELLO, stream=True))
    gw.wait_for(lambda: gw.metric("moa_requests_total", mixture="mix", outcome="ok") == before["ok"] + 2)
    assert gw.metric("moa_requests_total", mixture="mix", outcome="cancelled") == before["cancelled"]


# --- errors --------------------------------------------------------------------------------------


def test_malformed_json_is_400(stack: Stack) -> None:
    for body in (b'{"model": "mix", "messages": [', b"\xff\xfe", b"[1, 2]", b""):
        response = post(stack.gw, body)
        assert response.status_code == 400, body
        error = error_of(response)
        assert error["type"] == "invalid_request_error"
        assert "JSON" in error["message"]


@pytest.mark.parametrize(
    ("patch", "param"),
    [
        ({"temperature": "hot"}, "temperature"),
        ({"temperature": 3}, "temperature"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"model": 5}, "model"),
        ({"messages": "hello"}, "messages"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages.0.content"),
        ({"messages": [{"content": "hi"}]}, "messages.0.role"),
        ({"stream": {"yes": 1}}, "stream"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"moa": {"trace": True, "verbose": 1}}, "moa.verbose"),
        ({"model": None}, "model"),
    ],
)
def test_wrong_types_are_400_naming_the_field(stack: Stack, patch: dict[str, Any], param: str) -> None:
    response = post(stack.gw, {"model": "mix", "messages": HELLO, **patch})
    assert response.status_code == 400
    error = error_of(response)
    assert error["type"] == "invalid_request_error"
    assert error["param"] is not None and error["param"].startswith(param)
    assert stack.agg.chat_bodies() == []


def test_missing_and_empty_messages_are_400(stack: Stack) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        stack.gw.client().chat.completions.create(model="mix", messages=[])
    assert caught.value.status_code == 400 and caught.value.param == "messages"
    assert caught.value.type == "invalid_request_error"
    missing = post(stack.gw, {"model": "mix"})
    assert missing.status_code == 400 and error_of(missing)["param"] == "messages"
    assert "required" in error_of(missing)["message"]


def test_unknown_role_is_400(stack: Stack) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        stack.gw.client().chat.completions.create(model="mix", messages=[{"role": "wizard", "content": "hi"}])  # type: ignore[misc,list-item]
    assert caught.value.param == "messages.0.role"
    assert "system, developer, user, assistant" in caught.value.message


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, "tools"),
        ({"n": 2}, "n"),
        ({"logprobs": True}, "logprobs"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"frobnicate": 1}, "frobnicate"),
    ],
)
def test_unsupported_fields_are_400(stack: Stack, fields: dict[str, Any], param: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        stack.gw.client().chat.completions.create(model="mix", messages=HELLO, extra_body=fields)
    assert caught.value.status_code == 400 and caught.value.param == param
    assert param in caught.value.message
    assert stack.p1.chat_bodies() == []


def test_unknown_model_is_404_listing_valid_names(stack: Stack) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        stack.gw.client().chat.completions.create(model="gpt-5", messages=HELLO)
    error = caught.value
    assert error.status_code == 404 and error.code == "model_not_found" and error.param == "model"
    assert "gpt-5" in error.message
    assert all(name in error.message for name in ("mix", "deep", "p1", "p2", "agg"))


def test_body_over_the_limit_is_413(stack: Stack) -> None:
    big = [{"role": "user", "content": "x" * 5000}]
    with pytest.raises(openai.APIStatusError) as caught:
        stack.gw.client().chat.completions.create(model="mix", messages=big)  # type: ignore[arg-type]
    assert caught.value.status_code == 413 and caught.value.code == "request_too_large"
    # Without a content-length (chunked), the limit holds while reading.
    body = json.dumps({"model": "mix", "messages": big}).encode()
    chunked = stack.gw.http.post(
        "/v1/chat/completions", content=iter([body[:3000], body[3000:]]),
        headers={"content-type": "application/json"}, timeout=10,
    )  # fmt: skip
    assert "content-length" not in chunked.request.headers
    assert chunked.status_code == 413 and error_of(chunked)["code"] == "request_too_large"
    assert stack.p1.chat_bodies() == []


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/v1/nope", 404),
        ("GET", "/", 404),
        ("POST", "/v1/completions", 404),
        ("GET", "/v1/chat/completions", 405),
    ],
)
def test_unknown_routes_answer_json(stack: Stack, method: str, path: str, status: int) -> None:
    response = stack.gw.http.request(method, path)
    assert response.status_code == status
    error = error_of(response)
    assert path in error["message"]


def test_rejections_are_counted(stack: Stack) -> None:
    gw = stack.gw
    before = gw.metric("moa_requests_total", mixture="mix", outcome="rejected")
    post(gw, {"model": "mix", "messages": []})
    assert gw.metric("moa_requests_total", mixture="mix", outcome="rejected") == before + 1


# --- auth ----------------------------------------------------------------------------------------


@pytest.fixture
def keyed(
    fake_engine: FakeEngineFactory, gateway_server: GatewayFactory, monkeypatch: pytest.MonkeyPatch
) -> GatewayServer:
    monkeypatch.setenv("MOA_TEST_KEYS", "key-one, key-two,")
    a = fake_engine("a-model", tokens=2, template=TEMPLATE)
    config = fake_config({"a": a}, {"mix": mixture(["a"], "a")}, {"api_keys_env": "MOA_TEST_KEYS"})
    return gateway_server(config)


ROUTES = [("POST", "/v1/chat/completions"), ("GET", "/v1/models"), ("GET", "/ready"), ("GET", "/metrics")]


def test_auth_missing_wrong_and_right_keys_on_every_route(keyed: GatewayServer) -> None:
    body = {"model": "mix", "messages": HELLO}
    wrong = ({"authorization": "Bearer nope"}, {"authorization": "key-one"}, {"authorization": "Basic a2V5LW9uZQ=="})
    keyed.wait_for(lambda: keyed.http.get("/ready", headers={"authorization": "Bearer key-one"}).is_success)
    for method, path in ROUTES:
        for headers in ({}, *wrong):
            response = keyed.http.request(method, path, json=body, headers=headers)
            assert response.status_code == 401, (path, headers)
            error = error_of(response)
            assert (error["type"], error["code"]) == ("authentication_error", "invalid_api_key")
            assert response.headers["www-authenticate"] == "Bearer"
            assert ("missing" in error["message"]) == (not headers)
        for key in ("key-one", "key-two"):  # several keys; the scheme's case does not matter
            response = keyed.http.request(method, path, json=body, headers={"authorization": f"bearer {key}"})
            assert response.status_code == 200, (path, key)
    assert keyed.http.get("/nope").status_code == 401  # unknown routes reveal nothing without a key


def test_auth_with_the_sdk_and_open_health(keyed: GatewayServer) -> None:
    with pytest.raises(openai.AuthenticationError) as caught:
        keyed.client(api_key="wrong").chat.completions.create(model="mix", messages=HELLO)
    assert caught.value.status_code == 401
    reply = keyed.client(api_key="key-two").chat.completions.create(model="mix", messages=HELLO)
    assert reply.choices[0].message.content == answer("a-model", "hello", 2)
    assert [m.id for m in keyed.client(api_key="key-one").models.list()] == ["mix", "a"]
    assert keyed.http.get("/health").status_code == 200


def test_auth_is_off_when_the_variable_is_unset(
    fake_engine: FakeEngineFactory, gateway_server: GatewayFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MOA_TEST_UNSET_KEYS", raising=False)
    a = fake_engine("a-model", tokens=2)
    gw = gateway_server(fake_config({"a": a}, gateway={"api_keys_env": "MOA_TEST_UNSET_KEYS"}))
    assert gw.client(api_key="anything").chat.completions.create(model="a", messages=HELLO).choices
    # With no mixtures, ready means every endpoint is up.
    gw.wait_for(lambda: gw.http.get("/ready").status_code == 200, what="ready")
    assert gw.http.get("/ready").json()["endpoints"] == {"a": True}


# --- logs ----------------------------------------------------------------------------------------


def test_log_line_has_no_prompt_or_answer_text(stack: Stack, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="moa_local.gateway")
    secret = [{"role": "user", "content": "zebra-secret"}]
    stack.gw.client().chat.completions.create(model="mix", messages=secret)  # type: ignore[arg-type]
    list(stack.gw.client().chat.completions.create(model="p1", messages=secret, stream=True))  # type: ignore[arg-type]
    stack.gw.wait_idle()  # an answered request logs just after its answer; a refused one, before
    post(stack.gw, {"model": "mix", "messages": "zebra-secret"})
    post(stack.gw, {"model": "mix", "messages": [{"role": "user", "content": "zebra-secret"}], "stop": [1]})
    stack.gw.wait_for(lambda: len(request_lines(caplog)) >= 4, what="four log lines")
    assert "zebra" not in caplog.text
    ok, passthrough, bad, bad_stop = request_lines(caplog)[-4:]
    assert (ok["model"], ok["status"], ok["outcome"]) == ("mix", 200, "ok")
    assert ok["completion_tokens"] == 4 * 6 and ok["latency_ms"] > 0 and ok["request_id"]
    assert (passthrough["model"], passthrough["status"]) == ("p1", 200)
    assert (bad["status"], bad["outcome"], bad_stop["status"]) == (400, "rejected", 400)


def test_log_content_adds_prompt_and_answer(
    fake_engine: FakeEngineFactory, gateway_server: GatewayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="moa_local.gateway")
    a = fake_engine("a-model", tokens=2, template=TEMPLATE)
    gw = gateway_server(fake_config({"a": a}, {"mix": mixture(["a"], "a")}, {"log_content": True}))
    gw.client().chat.completions.create(model="mix", messages=[{"role": "user", "content": "zebra-secret"}])
    gw.wait_for(lambda: len(request_lines(caplog)) >= 1, what="a log line")
    [line] = request_lines(caplog)
    assert line["prompt"] == "zebra-secret" and line["answer"] == answer("a-model", "zebra-secret", 2)


def test_serve_command_has_a_log_content_option(fake_engine: FakeEngineFactory, tmp_path: Path) -> None:
    """`moa-local serve --log-content` for real (the default line is checked in-process above)."""
    a = fake_engine("a-model", tokens=2, template=TEMPLATE)
    config = tmp_path / "config.yaml"
    endpoints = {"a": {"base_url": a.base_url, "model": "a-model"}}
    config.write_text(json.dumps({"endpoints": endpoints, "gateway": {"api_keys_env": None}}))
    lines = _serve_and_ask(config, ["--log-content"])
    [line] = [json.loads(x.split(": ", 1)[1]) for x in lines if "moa_local.gateway: {" in x]
    assert line["status"] == 200 and line["model"] == "a"
    assert line["prompt"] == "zebra-secret" and line["answer"] == answer("a-model", "zebra-secret", 2)
    assert any("logging prompt and answer text" in x for x in lines)


def _serve_and_ask(config: Path, flags: list[str]) -> list[str]:
    """Run `moa-local serve` on a free port, ask one question, stop it; its log lines."""
    command = [sys.executable, "-m", "moa_local", "serve", "--config", str(config), "--port", "0", *flags]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    assert process.stderr is not None
    lines: list[str] = []
    try:
        port = None
        deadline = time.monotonic() + 30
        while port is None and time.monotonic() < deadline:
            line = process.stderr.readline()
            lines.append(line)
            found = re.search(r"running on http://127\.0\.0\.1:(\d+)", line)
            port = int(found.group(1)) if found else None
        assert port is not None, "".join(lines)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=10)
        client.chat.completions.create(model="a", messages=[{"role": "user", "content": "zebra-secret"}])
    finally:
        process.terminate()
        _, rest = process.communicate(timeout=15)
    return lines + rest.splitlines()
