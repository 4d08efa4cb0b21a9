"""The chat route's admission and refusals over real HTTP: slow uploads, and the request id on every error.

A request counts in flight from its first byte, so a body trickling in
holds a slot until the body deadline answers it with a 408. Every error
response, on the chat route and off it, carries the request's id, the same
one its log line has.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import threading
from typing import Any

import httpx
import pytest

from tests.support.fake_fixtures import FakeEngineFactory
from tests.support.gateway_fixtures import (
    HELLO,
    GatewayFactory,
    Stack,
    StackFactory,
    error_of,
    fake_config,
    mixture,
    post,
    request_lines,
)


def _trickle(sock: socket.socket, stop: threading.Event, interval_s: float) -> None:
    """Send one byte of JSON whitespace every `interval_s` until stopped or the server hangs up."""
    while not stop.wait(interval_s):
        try:
            sock.sendall(b" ")
        except OSError:
            return


def _read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of one response with a Content-Length."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before a response: {data!r}"
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    while len(body) < int(headers["content-length"]):
        chunk = sock.recv(65536)
        assert chunk, "connection closed mid-body"
        body += chunk
    return int(lines[0].split()[1]), headers, body


def test_fault_a_body_sent_byte_by_byte_holds_a_slot_and_gets_a_408(
    own_stack: StackFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="moa_local.gateway")
    s = own_stack({"max_inflight": 1})
    gw = s.gw
    gw.gateway.body_timeout_s = 1.0
    body = json.dumps({"model": "mix", "messages": HELLO}).encode()
    stop = threading.Event()
    with socket.create_connection(("127.0.0.1", gw.port), timeout=15) as slow:
        slow.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n"
            b"X-Request-Id: slow-1\r\nContent-Length: %d\r\n\r\n%s" % (len(body) + 1000, body)
        )  # the body is all there but for 1,000 bytes of trailing space, which come at 4 bytes/s
        trickler = threading.Thread(target=_trickle, args=(slow, stop, 0.25), daemon=True)
        trickler.start()
        try:
            # Counted from its first byte: it holds the only slot, so another request is refused.
            gw.wait_for(lambda: gw.gateway.inflight == 1 and gw.metric("moa_gateway_inflight") == 1)
            busy = post(gw, {"model": "p1", "messages": HELLO}, headers={"x-request-id": "busy-1"})
            assert busy.status_code == 429 and busy.headers["x-request-id"] == "busy-1"
            assert error_of(busy)["code"] == "too_many_requests"
            # The body deadline answers it, and the connection is closed.
            status, headers, answer = _read_response(slow)
        finally:
            stop.set()
            trickler.join()
        try:
            rest = slow.recv(65536)
        except ConnectionResetError:  # a byte that crossed the close gets a reset
            rest = b""
        assert rest == b""
    assert (status, headers["x-request-id"], headers["connection"]) == (408, "slow-1", "close")
    error = json.loads(answer)["error"]
    assert (error["type"], error["code"]) == ("invalid_request_error", "request_timeout")
    assert "within 1s" in error["message"]
    gw.wait_for(lambda: gw.gateway.inflight == 0 and gw.metric("moa_gateway_inflight") == 0, what="slot free")
    assert [line["status"] for line in request_lines(caplog) if line["request_id"] == "slow-1"] == [408]
    assert all(f.chat_bodies() == [] for f in s.fakes)
    # The slot is free again.
    assert post(gw, {"model": "p1", "messages": HELLO}).status_code == 200


ERRORS: list[tuple[str, str, Any, int]] = [
    ("POST", "/v1/chat/completions", {"model": "mix", "messages": []}, 400),
    ("POST", "/v1/chat/completions", b'{"model": "mix", "messages": [', 400),
    ("POST", "/v1/chat/completions", {"model": "nope", "messages": HELLO}, 404),
    ("POST", "/v1/chat/completions", {"model": "mix", "messages": [{"role": "user", "content": "x" * 5000}]}, 413),
    ("GET", "/v1/chat/completions", None, 405),
    ("GET", "/v1/nope", None, 404),
    ("GET", "/v1/models/nope", None, 404),
]


@pytest.mark.parametrize(("method", "path", "body", "status"), ERRORS, ids=[f"{e[3]}-{e[1]}" for e in ERRORS])
def test_every_error_response_carries_the_request_id(
    stack: Stack, caplog: pytest.LogCaptureFixture, method: str, path: str, body: Any, status: int
) -> None:
    caplog.set_level(logging.INFO, logger="moa_local.gateway")
    content = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
    given = stack.gw.http.request(method, path, content=content, headers={"x-request-id": "client-id-7"})
    assert given.status_code == status
    assert given.headers["x-request-id"] == "client-id-7" and error_of(given)
    made = stack.gw.http.request(method, path, content=content, headers={"x-request-id": "not sane!"})
    assert made.status_code == status and re.fullmatch(r"[0-9a-f]{32}", made.headers["x-request-id"])
    if path == "/v1/chat/completions" and method == "POST":  # the same id as the request's log line
        ids = [line["request_id"] for line in request_lines(caplog) if line["status"] == status]
        assert ids[-2:] == ["client-id-7", made.headers["x-request-id"]]


def test_a_401_carries_the_request_id(
    fake_engine: FakeEngineFactory, gateway_server: GatewayFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MOA_TEST_KEYS", "key-one")
    a = fake_engine("a-model", tokens=2)
    gw = gateway_server(fake_config({"a": a}, {"mix": mixture(["a"], "a")}, {"api_keys_env": "MOA_TEST_KEYS"}))
    for method, path in (("POST", "/v1/chat/completions"), ("GET", "/v1/models"), ("GET", "/nope")):
        response = gw.http.request(method, path, json={"model": "mix", "messages": HELLO},
                                   headers={"x-request-id": "who-1"})  # fmt: skip
        assert response.status_code == 401 and response.headers["x-request-id"] == "who-1"
        assert error_of(response)["type"] == "authentication_error"


def test_a_client_leaving_mid_body_is_counted_once_and_frees_its_slot(own_stack: StackFactory) -> None:
    s = own_stack({"max_inflight": 1})
    gw = s.gw
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\nContent-Length: 100\r\n\r\n{")
        gw.wait_for(lambda: gw.gateway.inflight == 1, what="counted from the first byte")
    gw.wait_for(lambda: gw.metric("moa_requests_total", mixture="unknown", outcome="cancelled") == 1)
    gw.wait_for(lambda: gw.gateway.inflight == 0 and gw.metric("moa_gateway_inflight") == 0, what="slot free")
    assert httpx.post(f"{gw.url}/v1/chat/completions", json={"model": "p1", "messages": HELLO}).status_code == 200
