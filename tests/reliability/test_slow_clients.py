"""Slow and stuck clients: a body sent at 1 byte/s, streams that are never read.

Both are raw sockets, so the client does exactly that and nothing more:
the uploader sends its headers, then one byte a second; the stuck reader
asks for a long streamed answer with a tiny receive buffer and never reads
it. Neither may keep others out: the gateway bounds the upload (408 after
`Gateway.body_timeout_s`, counted in flight from the first byte) and the
stuck answer (the request's cap, then its slot and its engine call are
freed), while other clients are answered. Bounds are waited for by
polling, never slept.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator

import pytest

from tests.support.gateway_fixtures import HELLO, GatewayServer, Stack, StackFactory

BOUND_S = 10.0  # the waits' bound: the configured ones below are 2 s (plus the send grace after a cap)


def raw_request(
    gw: GatewayServer, body: bytes, declared: int | None = None, rcvbuf: int | None = None
) -> socket.socket:
    sock = socket.socket()
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect(("127.0.0.1", gw.port))
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body) if declared is None else declared}\r\n\r\n"
    )
    sock.sendall(head.encode() + body)
    return sock


class Trickle:
    """Sends a body one byte a second on `sock`, until it is all sent or stopped."""

    def __init__(self, sock: socket.socket, body: bytes) -> None:
        self.sock, self.body = sock, body
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        for i in range(len(self.body)):
            if self.stopped.wait(1.0):
                return
            try:
                self.sock.sendall(self.body[i : i + 1])
            except OSError:
                return

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join()


@pytest.fixture
def slow_stack(own_stack: StackFactory) -> Iterator[Stack]:
    stack = own_stack({"max_inflight": 4}, timeout_s=2.0)
    stack.gw.gateway.body_timeout_s = 2.0  # type: ignore[attr-defined]  # the upload bound (a gateway attribute)
    yield stack


def answered(gw: GatewayServer) -> bool:
    """Whether a normal client gets its answer now (the stuck ones may hold every slot)."""
    response = gw.http.post("/v1/chat/completions", json={"model": "mix", "messages": HELLO}, timeout=BOUND_S)
    return response.status_code == 200


def test_fault_a_body_sent_at_one_byte_a_second_is_counted_bounded_and_keeps_no_one_out(slow_stack: Stack) -> None:
    gw = slow_stack.gw
    body = json.dumps({"model": "mix", "messages": HELLO}).encode()
    sock = raw_request(gw, b"", declared=len(body))
    trickle = Trickle(sock, body)
    try:
        gw.wait_for(lambda: gw.gateway.inflight == 1, BOUND_S, "the upload counted in flight from its first byte")
        assert answered(gw), "another client was not answered during the upload"
        sock.settimeout(BOUND_S)
        head = sock.recv(65536).decode("latin-1")  # the gateway ends the upload itself
        assert head.startswith("HTTP/1.1 408"), head[:200]
        assert '"error"' in head or "content-length" in head.lower()
        gw.wait_for(lambda: gw.gateway.inflight == 0, BOUND_S, "the upload's slot freed")
    finally:
        trickle.stop()
        sock.close()
    assert slow_stack.p1.chat_bodies()  # the other client's request ran; the upload never reached an engine


def test_fault_streams_never_read_free_their_slots_and_engine_calls_at_the_cap(slow_stack: Stack) -> None:
    gw = slow_stack.gw
    slow_stack.agg.set(tokens=100_000)  # megabytes of events: far more than the socket buffers hold
    body = json.dumps({"model": "mix", "messages": HELLO, "stream": True, "max_tokens": 100_000}).encode()
    # ... and tiny receive buffers: the gateway's sends block at once.
    stuck = [raw_request(gw, body, rcvbuf=4096) for _ in range(3)]  # 3 of the 4 slots
    try:
        gw.wait_for(lambda: gw.metric("moa_inflight", endpoint="agg") >= 1, BOUND_S, "the stuck answers under way")
        assert answered(gw), "another client was not answered beside the stuck ones"
        gw.wait_for(lambda: gw.gateway.inflight == 0, BOUND_S, "the stuck requests ended at their 2 s cap")
        assert gw.metric("moa_inflight", endpoint="agg") == 0
        assert gw.metric("moa_requests_total", mixture="mix", outcome="timeout") == 3
        assert answered(gw)
    finally:
        for sock in stuck:
            sock.close()
