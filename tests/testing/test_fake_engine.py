"""The fake engine itself, driven by the real openai SDK over loopback HTTP."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import threading
import time

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from moa_local.testing.behavior import Behavior
from tests.support.fake_fixtures import FakeEngineFactory, FakeServer

USER: list[ChatCompletionMessageParam] = [{"role": "user", "content": "tell me three things"}]


def client(server: FakeServer, *, max_retries: int = 0, timeout: float = 5.0) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="sk-test", max_retries=max_retries, timeout=timeout)


def test_plain_completion(fake_engine: FakeEngineFactory) -> None:
    a = fake_engine(model="a", tokens=3)
    reply = client(a).chat.completions.create(model="a", messages=USER)
    assert reply.model == "a"
    assert reply.choices[0].message.content == "a says: w1 w2 w3"
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage is not None
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens, reply.usage.total_tokens) == (4, 5, 9)


def test_streaming_with_usage(fake_engine: FakeEngineFactory) -> None:
    a = fake_engine(model="a", tokens=4)
    stream = client(a).chat.completions.create(
        model="a",
        messages=USER,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert pieces == ["a", " says:", " w1", " w2", " w3", " w4"]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 6


def test_n_choices_and_max_tokens(fake_engine: FakeEngineFactory) -> None:
    a = fake_engine(model="a", template="{model}#{index}: {words}")
    reply = client(a).chat.completions.create(model="a", messages=USER, n=3, max_tokens=3)
    assert [c.index for c in reply.choices] == [0, 1, 2]
    assert [c.message.content for c in reply.choices] == ["a#0: w1 w2", "a#1: w1 w2", "a#2: w1 w2"]
    assert {c.finish_reason for c in reply.choices} == {"length"}
    assert reply.usage is not None and reply.usage.completion_tokens == 9

    stream = client(a).chat.completions.create(model="a", messages=USER, n=2, stream=True)
    texts = ["", ""]
    for chunk in stream:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
    assert texts == ["a#0: w1 w2 w3 w4 w5 w6 w7 w8", "a#1: w1 w2 w3 w4 w5 w6 w7 w8"]


def test_template_reply_and_counter(fake_engine: FakeEngineFactory) -> None:
    a = fake_engine(model="a", template="{model} answer {request} to: {prompt}")
    first = client(a).chat.completions.create(model="other", messages=USER)
    assert first.choices[0].message.content == "other answer 1 to: tell me three things"
    a.behavior.reply = "fixed text"
    second = client(a).chat.completions.create(model="a", messages=USER)
    assert second.choices[0].message.content == "fixed text"


def test_models_health_and_metrics(fake_engine: FakeEngineFactory) -> None:
    a = fake_engine(model=["a", "b"], tokens=2)
    assert [m.id for m in client(a).models.list()] == ["a", "b"]
    client(a).chat.completions.create(model="a", messages=USER)
    assert httpx.get(f"{a.url}/health", timeout=5).status_code == 200
    metrics = httpx.get(f"{a.url}/metrics", timeout=5).text
    assert 'vllm:generation_tokens_total{model_name="a"} 4' in metrics
    assert 'vllm:num_requests_running{model_name="a"} 0' in metrics


def test_recording_bodies_and_headers(fake_engine: FakeEngineFactory) -> None:
    a = fake_engine(model="a")
    client(a).chat.completions.create(model="a", messages=USER, temperature=0.7, seed=3)
    body = a.chat_bodies()[0]
    assert body["messages"] == USER and body["temperature"] == 0.7 and body["seed"] == 3
    recorded = a.requests[0]
    assert recorded.method == "POST" and "authorization" not in recorded.headers
    assert recorded.headers["content-type"] == "application/json"
    over_http = httpx.get(f"{a.url}/fake/requests", timeout=5).json()
    assert over_http[0]["body"] == body and over_http[0]["seq"] == recorded.seq


def test_behavior_over_http(fake_engine: FakeEngineFactory) -> None:
    a = fake_engine(model="a")
    assert httpx.post(f"{a.url}/fake/behavior", json={"tokens": 1}, timeout=5).json()["tokens"] == 1
    assert a.behavior.tokens == 1
    bad = httpx.post(f"{a.url}/fake/behavior", json={"tokenz": 1}, timeout=5)
    assert bad.status_code == 400 and "tokenz" in bad.json()["error"]["message"]
    assert httpx.post(f"{a.url}/fake/behavior", json={"status": "x"}, timeout=5).status_code == 400
    httpx.post(f"{a.url}/fake/reset", timeout=5)
    assert a.behavior == Behavior() and a.requests == []


def test_fault_behavior_post_failing_validation_half_way_is_a_400_and_changes_nothing(
    fake_engine: FakeEngineFactory,
) -> None:
    a = fake_engine(model="a", tokens=2)
    bad = httpx.post(f"{a.url}/fake/behavior", json={"tokens": 3, "template": "{model.nope}"}, timeout=5)
    assert bad.status_code == 400 and bad.json()["error"]["message"].startswith("behavior.template: cannot format")
    assert a.behavior == Behavior(tokens=2)
    assert httpx.get(f"{a.url}/fake/behavior", timeout=5).json()["tokens"] == 2


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (400, openai.BadRequestError),
        (429, openai.RateLimitError),
        (500, openai.InternalServerError),
        (503, openai.InternalServerError),
    ],
)
def test_fault_status(fake_engine: FakeEngineFactory, status: int, error: type[openai.APIStatusError]) -> None:
    a = fake_engine(model="a", status=status, retry_after=2)
    with pytest.raises(error) as caught:
        client(a).chat.completions.create(model="a", messages=USER)
    assert caught.value.status_code == status
    assert caught.value.code == str(status) and caught.value.message
    assert caught.value.response.headers["retry-after"] == "2"


def test_fault_status_for_next_k_requests(fake_engine: FakeEngineFactory) -> None:
    a = fake_engine(model="a", status=500, times=2)
    for _ in range(2):
        with pytest.raises(openai.InternalServerError):
            client(a).chat.completions.create(model="a", messages=USER)
    client(a).chat.completions.create(model="a", messages=USER)
    assert a.behavior.status is None and a.behavior.times is None


def test_fault_retry_after_is_honoured_by_sdk(fake_engine: FakeEngineFactory) -> None:
    a = fake_engine(model="a", status=429, retry_after=0.3, times=1)
    started = time.monotonic()
    client(a, max_retries=1).chat.completions.create(model="a", messages=USER)
    assert time.monotonic() - started >= 0.3
    assert len(a.chat_bodies()) == 2


def test_fault_cut_stream_raises(fake_engine: FakeEngineFactory) -> None:
    a = fake_engine(model="a", cut_after=2)
    stream = client(a).chat.completions.create(model="a", messages=USER, stream=True)
    received = []
    with pytest.raises(openai.APIConnectionError):
        for chunk in stream:
            received.append(chunk.choices[0].delta.content)
    assert received == ["", "a", " says:"]
    assert a.wait_for_event("cut").chunks == 2


def test_fault_cut_completion_raises(fake_engine: FakeEngineFactory) -> None:
    a = fake_engine(model="a", cut_after=0)
    with pytest.raises(openai.APIConnectionError):
        client(a).chat.completions.create(model="a", messages=USER)


def test_fault_hang_client_timeout_records_disconnect(fake_engine: FakeEngineFactory) -> None:
    a = fake_engine(model="a", hang=True)
    started = time.monotonic()
    with pytest.raises(openai.APITimeoutError):
        client(a, timeout=0.5).chat.completions.create(model="a", messages=USER)
    gave_up = time.monotonic()
    event = a.wait_for_event("disconnect")
    assert event.stage == "hang"
    assert started + 0.4 < event.at < gave_up + 1.0


def test_fault_client_closes_stream_midway(fake_engine: FakeEngineFactory) -> None:
    a = fake_engine(model="a", tokens=200, token_delay_ms=20)
    stream = client(a).chat.completions.create(model="a", messages=USER, stream=True)
    for i, _ in enumerate(stream):
        if i == 3:
            break
    stream.close()
    closed = time.monotonic()
    event = a.wait_for_event("disconnect")
    assert event.stage == "stream" and 0 < event.chunks < 200
    assert event.at - closed < 1.0
    assert 'finished_reason="abort"} 1' in httpx.get(f"{a.url}/metrics", timeout=5).text


def test_fault_latency_delays_first_token(fake_engine: FakeEngineFactory) -> None:
    a = fake_engine(model="a", latency_ms=300)
    started = time.monotonic()
    stream = client(a).chat.completions.create(model="a", messages=USER, stream=True)
    next(iter(stream))
    assert time.monotonic() - started >= 0.3
    stream.close()


def test_fault_stopped_server_refuses(fake_engine: FakeEngineFactory) -> None:
    a = fake_engine(model="a")
    a.stop()
    with pytest.raises(openai.APIConnectionError):
        client(a).chat.completions.create(model="a", messages=USER)
    a.restart()
    client(a).chat.completions.create(model="a", messages=USER)


def test_fault_stop_drops_requests_in_flight(fake_engine: FakeEngineFactory) -> None:
    a = fake_engine(model="a", hang=True)
    errors: list[Exception] = []

    def call() -> None:
        try:
            client(a).chat.completions.create(model="a", messages=USER)
        except openai.APIConnectionError as exc:
            errors.append(exc)

    caller = threading.Thread(target=call)
    caller.start()
    while not a.requests:
        time.sleep(0.01)
    a.stop()
    caller.join(timeout=5)
    assert len(errors) == 1 and not isinstance(errors[0], openai.APITimeoutError)


async def test_concurrent_streams_each_get_their_answer(fake_engine: FakeEngineFactory) -> None:
    a = fake_engine(model="a", template="echo: {prompt}", token_delay_ms=1)
    async with openai.AsyncOpenAI(base_url=a.base_url, api_key="x", max_retries=0, timeout=10) as aclient:

        async def ask(i: int) -> str:
            stream = await aclient.chat.completions.create(
                model="a",
                messages=[{"role": "user", "content": f"question {i}"}],
                stream=True,
            )
            return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

        answers = await asyncio.gather(*(ask(i) for i in range(50)))
    assert answers == [f"echo: question {i}" for i in range(50)]


def test_runs_as_a_process() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "moa_local.testing.fake_engine", "--port", str(port), "--model", "m", "--tokens", "2"]
    proc = subprocess.Popen(cmd)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 10
        while True:
            try:
                httpx.get(f"{url}/health", timeout=1).raise_for_status()
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "fake engine process did not come up"
                time.sleep(0.05)
        reply = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=5).chat.completions.create(
            model="m",
            messages=USER,
        )
        assert reply.choices[0].message.content == "m says: w1 w2"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
