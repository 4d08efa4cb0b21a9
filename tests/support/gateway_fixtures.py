"""Pytest plugin: the gateway running for real, on a free loopback port, for the gateway's tests.

    def test_x(gateway_server, fake_engine):
        a = fake_engine(model="a")
        gw = gateway_server(fake_config({"a": a}, {"mix": mixture(["a"], "a")}))
        reply = gw.client().chat.completions.create(model="mix", messages=[...])

`GatewayServer` runs `create_app(config)` under uvicorn in a thread (so the
lifespan opens and closes the pool, the pipeline and the prober), with its own
`Metrics` to read, and can run a coroutine on the server's event loop to look
at what is still pending there.

`Stack` is the gateway tests' standard set-up: two proposer fakes and an
aggregator fake (each answering "<model> re <prompt>: w1 w2 w3") behind one
gateway with mixtures "mix" (one layer) and "deep" (two). Fixtures: `stack`
(shared by a test module, fakes reset per test) and `own_stack(...)` (a
fresh one, for special configs and faults).
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import httpx
import openai
import pytest

from moa_local.api.app import create_app
from moa_local.api.gateway import Gateway
from moa_local.config import Config, parse_config
from moa_local.metrics import Metrics
from moa_local.testing.behavior import Behavior
from moa_local.testing.fake_engine import FakeEngine
from tests.support.fake_fixtures import FakeServer, ServerThread

T = TypeVar("T")
# Fault tests want one attempt per call, and no circuit breaker opening under them.
FAST_ENDPOINT: dict[str, Any] = {"max_retries": 0, "timeout_s": 30, "circuit": {"failures": 1000}}


def fake_config(
    endpoints: Mapping[str, FakeServer],
    mixtures: Mapping[str, Mapping[str, Any]] | None = None,
    gateway: Mapping[str, Any] | None = None,
    **endpoint_fields: Any,
) -> Config:
    """A validated config whose endpoints are the given fake engines (served model: the fake's first name)."""
    raw = {
        "endpoints": {
            name: {"base_url": fake.base_url, "model": fake.engine.models[0], **FAST_ENDPOINT, **endpoint_fields}
            for name, fake in endpoints.items()
        },
        "mixtures": dict(mixtures or {}),
        "gateway": {"api_keys_env": None, **(gateway or {})},
    }
    return parse_config(json.dumps(raw), "<test>")


def mixture(
    proposers: Sequence[str | Mapping[str, Any]], aggregator: str | Mapping[str, Any], **fields: Any
) -> dict[str, Any]:
    """One proposer layer (plus any `fields` of the mixture); agents given by endpoint name or in full."""
    agents = [{"endpoint": p} if isinstance(p, str) else dict(p) for p in proposers]
    agg = {"endpoint": aggregator} if isinstance(aggregator, str) else dict(aggregator)
    min_ok = fields.pop("min_ok", 1)
    deadline = fields.pop("deadline_s", None)
    layer: dict[str, Any] = {"agents": agents, "min_ok": min_ok}
    if deadline is not None:
        layer["deadline_s"] = deadline
    return {"layers": [layer], "aggregator": agg, **fields}


class _LoopProbe:
    """Passes every ASGI call through, remembering the server's event loop."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.loop: asyncio.AbstractEventLoop | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.loop = asyncio.get_running_loop()
        await self.app(scope, receive, send)


class GatewayServer:
    def __init__(self, config: Config, *, probe: bool = True) -> None:
        self.config = config
        self.metrics = Metrics()
        self.app = create_app(config, self.metrics, probe=probe)
        self._probe = _LoopProbe(self.app)
        self._thread = ServerThread(self._probe).start()
        self.port = self._thread.port
        self.url = f"http://127.0.0.1:{self.port}"
        self.base_url = f"{self.url}/v1"
        # Clients are made once: building one (its TLS context) costs more than a request here.
        self.http = httpx.Client(base_url=self.url, timeout=10)
        self._clients: dict[tuple[str, float], openai.OpenAI] = {}

    @property
    def gateway(self) -> Gateway:
        gateway: Gateway = self.app.state.gateway
        return gateway

    def client(self, api_key: str = "sk-none", timeout: float = 20.0) -> openai.OpenAI:
        """A sync SDK client (shared per key and timeout; closed with the server)."""
        key = (api_key, timeout)
        if key not in self._clients:
            self._clients[key] = openai.OpenAI(base_url=self.base_url, api_key=api_key, max_retries=0, timeout=timeout)
        return self._clients[key]

    def async_client(self, api_key: str = "sk-none", timeout: float = 20.0) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=self.base_url, api_key=api_key, max_retries=0, timeout=timeout)

    def metric(self, name: str, **labels: str) -> float:
        found = self.metrics.registry.get_sample_value(name, labels)
        return 0.0 if found is None else found

    def wait_for(self, check: Callable[[], bool], timeout_s: float = 5.0, what: str = "condition") -> None:
        deadline = time.monotonic() + timeout_s
        while not check():
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: not true within {timeout_s} s")
            time.sleep(0.01)

    def wait_idle(self, timeout_s: float = 5.0) -> None:
        """Wait until no request is in flight: every one answered, logged and counted in the metrics.

        A request is counted just after its last byte went out, so a client can see its answer
        before the count moves; read counters only once the gateway is idle.
        """
        self.wait_for(lambda: self.gateway.inflight == 0, timeout_s, "gateway idle")

    def on_loop(self, make: Callable[[], Awaitable[T]], timeout_s: float = 5.0) -> T:
        """Run a coroutine on the server's own event loop and return its result."""
        assert self._probe.loop is not None

        async def run() -> T:
            return await make()

        return asyncio.run_coroutine_threadsafe(run(), self._probe.loop).result(timeout_s)

    def pending_tasks(self) -> list[str]:
        """Names (coroutine qualnames) of the tasks alive on the server's loop, but the caller's."""

        async def tasks() -> list[str]:
            current = asyncio.current_task()
            return sorted(
                t.get_coro().__qualname__  # type: ignore[union-attr]
                for t in asyncio.all_tasks()
                if t is not current and not t.done()
            )

        return self.on_loop(tasks)

    def stop(self) -> None:
        for client in self._clients.values():
            client.close()
        self.http.close()
        self._thread.stop()


GatewayFactory = Callable[..., GatewayServer]


def keyed_gateway(config: Config, key: str) -> GatewayServer:
    """A gateway that requires `key`, as with `MOA_API_KEYS` set when it starts; the caller stops it."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MOA_API_KEYS", key)
        return GatewayServer(config)


@pytest.fixture
def gateway_server() -> Iterator[GatewayFactory]:
    """Factory: `gateway_server(config, probe=True) -> GatewayServer`, stopped at the end of the test."""
    servers: list[GatewayServer] = []

    def start(config: Config, *, probe: bool = True) -> GatewayServer:
        server = GatewayServer(config, probe=probe)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


# --- a standard stack: two proposers and an aggregator (fake engines) behind one gateway ---------

TEMPLATE = "{model} re {prompt}: {words}"
HELLO: list[Any] = [{"role": "user", "content": "hello"}]


def fake(model: str, **behavior: Any) -> FakeServer:
    return FakeServer(FakeEngine([model], Behavior(**{"tokens": 3, "template": TEMPLATE, **behavior})))


def answer(model: str, prompt: str, tokens: int = 3) -> str:
    return f"{model} re {prompt}: " + " ".join(f"w{i}" for i in range(1, tokens + 1))


class Stack:
    """Three fake engines (two proposers, one aggregator) behind one gateway."""

    def __init__(self, gateway: dict[str, Any] | None = None, **mixture_fields: Any) -> None:
        self.p1, self.p2, self.agg = fake("p1-model"), fake("p2-model"), fake("agg-model")
        proposers = [
            {"endpoint": "p1", "temperature": 0.7, "max_tokens": 64},
            {"endpoint": "p2", "temperature": 0.5, "top_p": 0.9, "max_tokens": 32, "n": 2},
        ]
        aggregator = {"endpoint": "agg", "temperature": 0.3, "max_tokens": 128}
        layers = [{"agents": [{"endpoint": "p1"}, {"endpoint": "p2"}]}, {"agents": [{"endpoint": "p1"}]}]
        deep = {"layers": layers, "aggregator": {"endpoint": "agg"}}
        config = fake_config(
            {"p1": self.p1, "p2": self.p2, "agg": self.agg},
            {"mix": mixture(proposers, aggregator, **mixture_fields), "deep": deep},
            {"max_body_bytes": 4096, **(gateway or {})},
        )
        self.fakes = (self.p1, self.p2, self.agg)
        self.gw = GatewayServer(config)

    def reset(self) -> None:
        for f in self.fakes:
            f.engine.reset()

    def stop(self) -> None:
        self.gw.stop()
        stoppers = [threading.Thread(target=f.stop) for f in self.fakes]  # each stop waits ~0.1 s
        for t in stoppers:
            t.start()
        for t in stoppers:
            t.join()


@pytest.fixture(scope="module")
def shared_stack() -> Iterator[Stack]:
    stack = Stack()
    yield stack
    stack.stop()


@pytest.fixture
def stack(shared_stack: Stack) -> Stack:
    """The module's stack with fresh fakes (behavior and records reset), and no request of a previous test
    still being counted."""
    shared_stack.gw.wait_idle()
    shared_stack.reset()
    return shared_stack


StackFactory = Callable[..., Stack]


@pytest.fixture
def own_stack() -> Iterator[StackFactory]:
    """Factory for a stack of one's own (special config or faults)."""
    stacks: list[Stack] = []

    def start(gateway: dict[str, Any] | None = None, **mixture_fields: Any) -> Stack:
        stacks.append(Stack(gateway, **mixture_fields))
        return stacks[-1]

    yield start
    for s in stacks:
        s.stop()


def engine_usage(*fakes: FakeServer) -> tuple[int, int]:
    """(prompt, completion) tokens the fakes counted, once they are idle."""
    totals = [0, 0]
    for f in fakes:
        text = f.engine.metrics_text()
        deadline = time.monotonic() + 5
        while "vllm:num_requests_running" in text and re.search(r"num_requests_running\{[^}]*\} 0\n", text) is None:
            assert time.monotonic() < deadline, "fake engine still busy"
            time.sleep(0.01)
            text = f.engine.metrics_text()
        for i, name in enumerate(("prompt_tokens_total", "generation_tokens_total")):
            found = re.search(rf"vllm:{name}\{{[^}}]*\}} (\d+)", text)
            assert found is not None
            totals[i] += int(found.group(1))
    return totals[0], totals[1]


def moa_of(obj: Any) -> dict[str, Any]:
    extra = obj.model_extra or {}
    assert "moa" in extra, "no moa object"
    moa: dict[str, Any] = extra["moa"]
    return moa


def error_of(response: httpx.Response) -> dict[str, Any]:
    """The OpenAI error envelope, checked for its four fields and JSON content type."""
    assert response.headers["content-type"].startswith("application/json")
    assert "Traceback" not in response.text and "<html" not in response.text.lower()
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    return error


def post(gw: GatewayServer, body: Any, **kwargs: Any) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"content-type": "application/json", **kwargs.pop("headers", {})}
    return gw.http.post("/v1/chat/completions", content=content, headers=headers, **kwargs)


def request_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    """The gateway's per-request log lines (JSON) captured so far."""
    lines = []
    for record in caplog.records:
        if record.name == "moa_local.gateway" and record.getMessage().startswith("{"):
            lines.append(json.loads(record.getMessage()))
    return lines
