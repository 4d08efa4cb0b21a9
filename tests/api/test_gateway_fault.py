"""The gateway when engines or clients misbehave: errors, deadlines, disconnects, overload, load.

Fake engines inject the faults (error statuses, hangs, slow streams, cut
streams); assertions are made on what the openai SDK sees and on what the
fakes recorded (their upstream connections closed, and when).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest

from moa_local.engines.endpoint import PROBE_CONNECTIONS
from tests.support.gateway_fixtures import HELLO, Stack, StackFactory, answer, error_of, moa_of, post, request_lines


def test_fault_ready_follows_the_quorum(own_stack: StackFactory) -> None:
    s = own_stack({"probe_interval_s": 0.05}, min_ok=2)
    gw = s.gw

    def ready() -> httpx.Response:
        return gw.http.get("/ready")

    gw.wait_for(lambda: ready().status_code == 200, what="ready")
    s.p2.stop()  # p1 alone gives 1 answer; mix needs 2, deep needs 1
    gw.wait_for(lambda: ready().status_code == 503, what="not ready")
    body = ready().json()
    assert body["ready"] is False and body["mixtures"] == {"mix": False, "deep": True}
    assert body["endpoints"]["p2"] is False and "p2" in body["reasons"]
    assert gw.metric("moa_endpoint_up", endpoint="p2") == 0
    s.p2.restart()
    gw.wait_for(lambda: ready().status_code == 200, what="ready again")
    s.agg.stop()  # no aggregator: no mixture can answer
    gw.wait_for(lambda: ready().json()["mixtures"] == {"mix": False, "deep": False}, what="aggregator down")
    s.agg.restart()


def test_fault_backend_failure_is_502(stack: Stack) -> None:
    stack.agg.set(status=500, error_message="engine exploded")
    with pytest.raises(openai.InternalServerError) as caught:
        stack.gw.client().chat.completions.create(model="mix", messages=HELLO)
    error = caught.value
    assert error.status_code == 502 and error.type == "backend_error" and error.code == "backend_failed"
    assert isinstance(error.body, dict) and error.body["message"] == "agg: engine answered 500: engine exploded"
    # A pass-through fails the same way, streaming or not.
    stack.p1.set(status=503, error_message="overloaded")
    raw = post(stack.gw, {"model": "p1", "messages": HELLO, "stream": True})
    assert raw.status_code == 502 and "overloaded" in error_of(raw)["message"]


def test_fault_unreachable_endpoint_is_502(own_stack: StackFactory) -> None:
    s = own_stack()
    s.agg.stop()
    response = post(s.gw, {"model": "agg", "messages": HELLO})
    assert response.status_code == 502 and error_of(response)["code"] == "backend_unavailable"
    s.agg.restart()


def test_fault_quorum_missed_is_503(stack: Stack) -> None:
    stack.p1.set(status=500)
    stack.p2.set(status=400, error_message="prompt refused")
    for stream in (False, True):
        response = post(stack.gw, {"model": "mix", "messages": HELLO, "stream": stream})
        assert response.status_code == 503
        error = error_of(response)
        assert (error["type"], error["code"]) == ("service_unavailable", "quorum_not_reached")
        assert "p1: error (engine answered 500: injected fault)" in error["message"]
        assert "p2: error (engine answered 400: prompt refused)" in error["message"]
    assert stack.agg.chat_bodies() == []


def test_fault_quorum_holds_when_enough_proposers_answer(stack: Stack) -> None:
    stack.p1.set(status=500)
    reply = stack.gw.client().chat.completions.create(model="mix", messages=HELLO, extra_body={"moa": {"trace": True}})
    assert reply.choices[0].message.content == answer("agg-model", "hello")
    agents = moa_of(reply)["layers"][0]["agents"]
    assert [a["status"] for a in agents] == ["error", "ok"] and "500" in agents[0]["error"]
    assert moa_of(reply)["layers"][0]["proposals_used"] == 2
    assert "p1-model" not in stack.agg.chat_bodies()[0]["messages"][0]["content"]


def test_fault_a_lone_surrogate_in_a_proposal_reaches_the_aggregator_as_a_replacement(stack: Stack) -> None:
    """An engine may answer with a lone UTF-16 surrogate escape; passed on as a reference it must not break the call."""
    stack.p1.set(reply="broken \ud800 text")
    reply = stack.gw.client().chat.completions.create(model="mix", messages=HELLO)
    assert reply.choices[0].message.content == answer("agg-model", "hello")
    assert "broken ? text" in stack.agg.chat_bodies()[0]["messages"][0]["content"]


def test_fault_layer_deadline_is_504_and_cancels_the_late_calls(own_stack: StackFactory) -> None:
    s = own_stack(deadline_s=0.3)
    s.p1.set(hang=True)
    s.p2.set(hang=True)
    started = time.monotonic()
    response = post(s.gw, {"model": "mix", "messages": HELLO})
    assert response.status_code == 504 and time.monotonic() - started < 5
    error = error_of(response)
    assert (error["type"], error["code"]) == ("timeout_error", "deadline_exceeded")
    assert "p1: late" in error["message"] and "p2: late" in error["message"]
    assert s.p1.wait_for_event("disconnect").stage == "hang"
    assert s.p2.wait_for_event("disconnect").stage == "hang"


def test_fault_request_cap_bounds_a_hanging_aggregator(own_stack: StackFactory) -> None:
    s = own_stack(timeout_s=0.5)
    s.agg.set(hang=True)
    started = time.monotonic()
    response = post(s.gw, {"model": "mix", "messages": HELLO})
    assert time.monotonic() - started < 5
    assert response.status_code == 504 and error_of(response)["code"] == "deadline_exceeded"
    assert s.agg.wait_for_event("disconnect").stage == "hang"
    # A slow stream that has begun ends with an error event at the cap, and the engine is told.
    s.agg.engine.reset()
    s.agg.set(tokens=50, token_delay_ms=100)
    stream = s.gw.client().chat.completions.create(model="mix", messages=HELLO, stream=True)
    pieces: list[str] = []
    with pytest.raises(openai.APIError) as caught:
        for chunk in stream:
            pieces.append(chunk.choices[0].delta.content or "")
    assert 0 < len(pieces) < 20 and "within 0.5s" in caught.value.message
    assert s.agg.wait_for_event("disconnect").stage == "stream"
    s.gw.wait_for(lambda: s.gw.metric("moa_requests_total", mixture="mix", outcome="timeout") == 2)


def test_fault_error_after_the_first_token_ends_the_stream_with_an_error_event(stack: Stack) -> None:
    stack.agg.set(cut_after=2)
    stream = stack.gw.client().chat.completions.create(model="mix", messages=HELLO, stream=True)
    pieces: list[str] = []
    with pytest.raises(openai.APIError) as caught:
        for chunk in stream:
            pieces.append(chunk.choices[0].delta.content or "")
    assert "".join(pieces) == "agg-model re"
    assert "agg" in caught.value.message and "broke off" in caught.value.message


async def test_fault_over_max_inflight_is_429_with_retry_after(own_stack: StackFactory) -> None:
    s = own_stack({"max_inflight": 1})
    s.p1.set(hang=True)
    s.p2.set(hang=True)
    async with s.gw.async_client() as client:
        first = asyncio.create_task(client.chat.completions.create(model="mix", messages=HELLO))
        await asyncio.to_thread(s.gw.wait_for, lambda: s.gw.gateway.inflight == 1, 5.0, "first request in flight")
        with pytest.raises(openai.RateLimitError) as caught:
            await client.chat.completions.create(model="p1", messages=HELLO)
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
    error = caught.value
    assert error.status_code == 429 and error.type == "rate_limit_error" and error.code == "too_many_requests"
    assert error.response.headers["retry-after"] == "1"
    assert s.gw.metric("moa_requests_total", mixture="p1", outcome="rejected") == 1
    s.gw.wait_for(lambda: s.gw.gateway.inflight == 0, what="first request cancelled")
    s.p1.set(hang=False)
    s.p2.set(hang=False)
    assert s.gw.client().chat.completions.create(model="mix", messages=HELLO).choices[0].message.content


# --- client disconnects --------------------------------------------------------------------------


def test_fault_disconnect_mid_stream_closes_every_upstream_call(own_stack: StackFactory) -> None:
    s = own_stack()
    s.agg.set(tokens=100, token_delay_ms=50)  # a 5 s answer
    gw = s.gw
    stream = gw.client().chat.completions.create(model="mix", messages=HELLO, stream=True)
    first = next(iter(stream))
    assert first.choices[0].delta.role == "assistant"
    stream.close()
    closed = time.monotonic()
    event = s.agg.wait_for_event("disconnect", timeout_s=3)
    assert event.stage == "stream" and event.chunks < 50
    assert event.at - closed < 2.0  # the answer would take 5 s
    gw.wait_for(lambda: gw.metric("moa_requests_total", mixture="mix", outcome="cancelled") == 1, what="counted")
    assert gw.metric("moa_agent_calls_total", endpoint="agg", role="aggregator", outcome="cancelled") == 1
    gw.wait_for(lambda: gw.gateway.inflight == 0, what="gateway idle")
    assert all(gw.metric("moa_inflight", endpoint=e) == 0 for e in ("p1", "p2", "agg"))
    assert gw.metric("moa_gateway_inflight") == 0


@pytest.mark.parametrize("stream", [False, True])
async def test_fault_disconnect_during_the_proposer_phase(own_stack: StackFactory, stream: bool) -> None:
    s = own_stack()
    s.p1.set(hang=True)
    s.p2.set(latency_ms=10_000)
    gw = s.gw
    async with gw.async_client(timeout=0.5) as client:
        with pytest.raises(openai.APITimeoutError):
            await client.chat.completions.create(model="mix", messages=HELLO, stream=stream)
    gone = time.monotonic()
    p1 = await asyncio.to_thread(s.p1.wait_for_event, "disconnect", 3.0)
    p2 = await asyncio.to_thread(s.p2.wait_for_event, "disconnect", 3.0)
    assert (p1.stage, p2.stage) == ("hang", "latency")
    assert max(p1.at, p2.at) - gone < 2.0  # they would wait 10 s, or forever
    assert s.agg.chat_bodies() == []
    await asyncio.to_thread(
        gw.wait_for, lambda: gw.metric("moa_requests_total", mixture="mix", outcome="cancelled") == 1, 5.0, "counted"
    )
    assert gw.metric("moa_agent_calls_total", endpoint="p1", role="proposer", outcome="cancelled") == 1
    assert gw.gateway.inflight == 0 and all(gw.metric("moa_inflight", endpoint=e) == 0 for e in ("p1", "p2"))


def test_fault_client_leaving_while_sending_the_body_is_no_error_of_ours(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="moa_local.gateway")
    gw = stack.gw
    before = gw.metric("moa_requests_total", mixture="unknown", outcome="cancelled")
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n"
            b'Content-Length: 1000\r\n\r\n{"model": "mix", "messages": ['
        )
        time.sleep(0.2)
    gw.wait_for(lambda: gw.metric("moa_requests_total", mixture="unknown", outcome="cancelled") == before + 1)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    assert request_lines(caplog)[-1]["outcome"] == "cancelled"


def test_fault_shutdown_closes_the_upstream_streams(own_stack: StackFactory) -> None:
    s = own_stack()
    s.agg.set(tokens=100, token_delay_ms=50)
    stream = s.gw.client().chat.completions.create(model="mix", messages=HELLO, stream=True)
    next(iter(stream))
    stopper = threading.Thread(target=s.gw.stop)
    stopper.start()
    with pytest.raises(openai.APIConnectionError):
        for _ in stream:
            pass
    stopper.join()
    assert s.agg.wait_for_event("disconnect", timeout_s=3).stage == "stream"


# --- concurrency ---------------------------------------------------------------------------------


def established(port: int) -> int:
    """Established TCP connections whose local end is `port` (server side), from /proc/net/tcp."""
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] == "01" and int(fields[1].rsplit(":", 1)[1], 16) == port:
            count += 1
    return count


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="counts connections from /proc/net/tcp")
async def test_fault_100_concurrent_streams_complete_and_leave_nothing_behind(stack: Stack) -> None:
    gw = stack.gw

    def tasks() -> list[str]:  # but a health probe, which may be under way at any moment
        return [name for name in gw.pending_tasks() if name != "Prober._probe"]

    baseline = tasks()
    assert baseline and not any("ChatResponse" in name for name in baseline)
    ok_before = gw.metric("moa_requests_total", mixture="mix", outcome="ok")

    async def one(client: openai.AsyncOpenAI, i: int) -> tuple[str, int]:
        stream = await client.chat.completions.create(
            model="mix", messages=[{"role": "user", "content": f"question-{i}"}], stream=True,
            stream_options={"include_usage": True},
        )  # fmt: skip
        text, tokens = "", 0
        async for chunk in stream:
            text += "".join(c.delta.content or "" for c in chunk.choices)
            tokens = chunk.usage.completion_tokens if chunk.usage else tokens
        return text, tokens

    async with gw.async_client(timeout=60) as client:
        results = await asyncio.gather(*(one(client, i) for i in range(100)))
    for i, (text, tokens) in enumerate(results):
        assert text == answer("agg-model", f"question-{i}")
        assert tokens == 4 * 6
    assert {body["messages"][0]["content"] for body in stack.p1.chat_bodies()} == {f"question-{i}" for i in range(100)}
    gw.wait_for(lambda: gw.metric("moa_requests_total", mixture="mix", outcome="ok") == ok_before + 100)
    assert gw.gateway.inflight == 0 and gw.metric("moa_gateway_inflight") == 0
    assert all(gw.metric("moa_inflight", endpoint=e) == 0 for e in ("p1", "p2", "agg"))
    assert await asyncio.to_thread(tasks) == baseline
    # Upstream connections stay within each endpoint's pool (32 call slots, and the health probes' own
    # pool of 2, whose kept-alive connection may be open at any moment); client connections are all gone.
    for f in stack.fakes:
        assert established(f.port) <= 32 + PROBE_CONNECTIONS
    await asyncio.to_thread(gw.wait_for, lambda: established(gw.port) == 0, 5.0, "client connections closed")
