"""Pytest plugin: fake OpenAI-compatible engines on loopback, for fault-injection tests.

    def test_fault_x(fake_engine):
        a = fake_engine(model="a", latency_ms=50)     # Behavior fields as keywords
        client = openai.OpenAI(base_url=a.base_url, api_key="x", max_retries=0)
        a.behavior.status = 503                        # change it live
        ... a.requests, a.events, a.stop()

Each engine is a real uvicorn server on 127.0.0.1 and a free port, in a
background thread, stopped at the end of the test. `ServerThread` runs any
ASGI app the same way (the gateway's tests can use it too).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
import uvicorn

from moa_local.testing.behavior import Behavior, FakeEvent, RecordedRequest
from moa_local.testing.fake_engine import FakeEngine

_START_TIMEOUT_S = 10.0


class ServerThread:
    """One uvicorn server for `app` on 127.0.0.1, in a daemon thread. `port=0` picks a free one."""

    def __init__(self, app: Any, port: int = 0) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", port))
        self.port: int = self._sock.getsockname()[1]
        config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=1)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True)

    def start(self) -> ServerThread:
        self._thread.start()
        deadline = time.monotonic() + _START_TIMEOUT_S
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self._sock.close()
                raise RuntimeError(f"server on 127.0.0.1:{self.port} did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        """Stop like a dying process: open connections are dropped, new ones refused."""
        if self._thread.is_alive():
            loop = self._server.servers[0].get_loop()
            loop.call_soon_threadsafe(self._drop_connections)
            self._server.should_exit = True
            self._thread.join(timeout=_START_TIMEOUT_S)
        self._sock.close()

    def _drop_connections(self) -> None:  # runs on the server's loop
        for protocol in list(self._server.server_state.connections):
            transport = getattr(protocol, "transport", None)
            if transport is not None:
                transport.abort()


class FakeServer:
    """Handle on one running fake engine."""

    def __init__(self, engine: FakeEngine, port: int = 0) -> None:
        self.engine = engine
        self._thread = ServerThread(engine, port).start()
        self.port = self._thread.port
        self.url = f"http://127.0.0.1:{self.port}"
        self.base_url = f"{self.url}/v1"

    @property
    def behavior(self) -> Behavior:
        """The live behavior: set its fields to change what the next requests get."""
        return self.engine.behavior

    def set(self, **fields: Any) -> None:
        """Set several behavior fields at once, validated."""
        self.engine.behavior.update(fields)

    @property
    def requests(self) -> list[RecordedRequest]:
        return list(self.engine.requests)

    @property
    def events(self) -> list[FakeEvent]:
        return list(self.engine.events)

    def chat_bodies(self) -> list[Any]:
        """The JSON bodies of the chat completion requests received, in order."""
        return [r.body for r in self.requests if r.path == "/v1/chat/completions"]

    def wait_for_event(self, kind: str, timeout_s: float = 5.0) -> FakeEvent:
        """The first event of `kind`, waiting for it up to `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while True:
            found = [e for e in self.events if e.kind == kind]
            if found:
                return found[0]
            if time.monotonic() > deadline:
                raise AssertionError(f"no {kind!r} event within {timeout_s} s; events: {self.events}")
            time.sleep(0.01)

    def stop(self) -> None:
        self._thread.stop()

    def restart(self) -> None:
        """Serve again on the same port (after `stop`), keeping behavior and records."""
        self._thread = ServerThread(self.engine, self.port).start()


FakeEngineFactory = Callable[..., FakeServer]


@pytest.fixture
def fake_engine() -> Iterator[FakeEngineFactory]:
    """Factory: `fake_engine(model="a", **behavior) -> FakeServer`; `model` may be a list of names."""
    servers: list[FakeServer] = []

    def start(model: str | Sequence[str] = "fake", **behavior: Any) -> FakeServer:
        models = [model] if isinstance(model, str) else list(model)
        server = FakeServer(FakeEngine(models, Behavior(**behavior)))
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()
