"""A small, controllable OpenAI-compatible fake engine, for fault tests and benchmarks.

Serves `POST /v1/chat/completions` (JSON or SSE, `n`, `max_tokens`,
`stream_options.include_usage`), `GET /v1/models`, `GET /health` and a few
vLLM-named metrics at `GET /metrics`, answering deterministically as set by a
`Behavior` (`behavior.py`; payloads in `payload.py`): latency,
per-token delay, error statuses, streams cut mid-way, hangs. It records every
request and every client disconnect it saw while still producing (detected
from the ASGI `http.disconnect` message, so it is the real connection
closing). Control over HTTP: `GET|POST /fake/behavior`, `POST /fake/reset`,
`GET /fake/requests`, `GET /fake/events`.

It is a raw ASGI app (no framework, no pydantic) so that one process serves
well over 500 calls/s as the benchmark's "instant engine". Left out on
purpose: tools, logprobs, stop sequences, sampling, auth, request
validation beyond what the answer needs, and disconnect watching on
answers with no latency, delay or hang (there is nothing to wait on).

    python -m moa_local.testing.fake_engine --port 8199 --model a --model b --tokens 16
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, MutableMapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from moa_local.testing.behavior import Behavior, FakeEvent, RecordedRequest
from moa_local.testing.payload import Completion, error_body

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_JSON = [(b"content-type", b"application/json")]
_SSE = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
_SECRET_HEADERS = {"authorization", "proxy-authorization", "api-key", "x-api-key"}


@dataclass
class _Exchange:
    """Progress of one chat answer, read when the client disconnects."""

    seq: int
    path: str
    stage: str = "start"
    chunks: int = 0
    tokens: int = 0
    finishing: bool = False  # the last body message is being sent


class FakeEngine:
    """The ASGI app. `behavior` may be changed at any time, from any thread."""

    def __init__(
        self, models: Sequence[str] = ("fake",), behavior: Behavior | None = None, *, max_records: int = 10_000
    ) -> None:
        self.models = list(models) or ["fake"]
        self._initial = behavior or Behavior()
        self.behavior = Behavior(**self._initial.to_dict())
        self.requests: deque[RecordedRequest] = deque(maxlen=max_records)
        self.events: deque[FakeEvent] = deque(maxlen=max_records)
        self._seq = self._chats = self._running = 0
        self._prompt_tokens = self._generation_tokens = 0
        self._finished: dict[str, int] = {"stop": 0, "length": 0, "abort": 0}

    def reset(self) -> None:
        """Back to the initial behavior; forget requests, events and counters."""
        self.behavior.update(self._initial.to_dict())  # in place: handles on it stay live
        self.requests.clear()
        self.events.clear()
        self._seq = self._chats = 0
        self._prompt_tokens = self._generation_tokens = 0
        self._finished = dict.fromkeys(self._finished, 0)

    async def __call__(self, scope: Message, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] != "http":
            return
        method, path = scope["method"], scope["path"]
        raw = await _read_body(receive)
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        if path.startswith("/fake/"):
            await self._control(method, path, body, send)
            return
        self._seq += 1
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        for name in _SECRET_HEADERS & headers.keys():
            del headers[name]
        self.requests.append(RecordedRequest(self._seq, method, path, body, headers, time.monotonic()))
        if (method, path) == ("POST", "/v1/chat/completions"):
            await self._chat(_Exchange(self._seq, path), body, receive, send)
        elif (method, path) == ("GET", "/v1/models"):
            data = [{"id": m, "object": "model", "created": 0, "owned_by": "fake", "root": m} for m in self.models]
            await _send_json(send, 200, {"object": "list", "data": data})
        elif (method, path) == ("GET", "/health"):
            await _send_bytes(send, 200, b"", [])
        elif (method, path) == ("GET", "/metrics"):
            await _send_bytes(send, 200, self.metrics_text().encode(), [(b"content-type", b"text/plain")])
        else:
            await _send_json(send, 404, error_body(404, f"no route {method} {path}"))

    async def _chat(self, ex: _Exchange, body: Any, receive: Receive, send: Send) -> None:
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            await _send_json(send, 400, error_body(400, "body must be a JSON object with a 'messages' list"))
            return
        behavior = self.behavior.take()
        self._chats += 1
        self._running += 1
        answer = self._answer(ex, behavior, body, self._chats, send)
        try:
            if behavior.hang or behavior.latency_ms or behavior.token_delay_ms:
                await self._watched(ex, answer, receive)
            else:  # instant: nothing to wait on, so no disconnect to watch for
                await answer
        finally:
            self._running -= 1
            self._generation_tokens += ex.tokens

    async def _watched(self, ex: _Exchange, answer: Coroutine[Any, Any, None], receive: Receive) -> None:
        """Run `answer` while listening for the client going away; cancel it if so."""
        producer = asyncio.ensure_future(answer)
        watcher = asyncio.ensure_future(_disconnected(receive))
        try:
            await asyncio.wait((producer, watcher), return_when=asyncio.FIRST_COMPLETED)
        finally:  # also when this task is cancelled (server shutdown): then no event
            client_gone = watcher.done()
            watcher.cancel()
            if not producer.done() and not ex.finishing:
                producer.cancel()
                if client_gone:
                    self.events.append(FakeEvent("disconnect", ex.seq, ex.path, ex.stage, ex.chunks, time.monotonic()))
                    self._finished["abort"] += 1
        await asyncio.wait((producer,))
        if not producer.cancelled():
            producer.result()

    async def _answer(self, ex: _Exchange, b: Behavior, req: dict[str, Any], number: int, send: Send) -> None:
        if b.latency_ms:
            ex.stage = "latency"
            await asyncio.sleep(b.latency_ms / 1000)
        if b.hang:
            ex.stage = "hang"
            await asyncio.Event().wait()  # until cancelled by the client's disconnect
        if b.status is not None:
            retry = [] if b.retry_after is None else [(b"retry-after", f"{b.retry_after:g}".encode())]
            await _send_json(send, b.status, error_body(b.status, b.error_message), retry)
            return
        completion = Completion.build(b, req, number, self.models[0])
        self._prompt_tokens += completion.usage["prompt_tokens"]
        if completion.stream:
            await self._stream(ex, b, completion, send)
            return
        if b.token_delay_ms:
            ex.stage = "generate"
            await asyncio.sleep(completion.steps * b.token_delay_ms / 1000)
        data = completion.completion_body()
        if b.cut_after is not None:  # promise the whole body, send half, drop the connection
            length = [(b"content-length", str(len(data)).encode())]
            await send({"type": "http.response.start", "status": 200, "headers": _JSON + length})
            await send({"type": "http.response.body", "body": data[: len(data) // 2], "more_body": True})
            self.events.append(FakeEvent("cut", ex.seq, ex.path, "body", 0, time.monotonic()))
            return
        ex.finishing = True
        ex.tokens = completion.usage["completion_tokens"]
        for reason in completion.reasons:
            self._finished[reason] += 1
        await _send_bytes(send, 200, data, _JSON)

    async def _stream(self, ex: _Exchange, b: Behavior, completion: Completion, send: Send) -> None:
        """Role events, then one event per choice per step, then the tail; batched unless delayed."""
        ex.stage = "stream"
        writer = completion.chunks()
        delay = b.token_delay_ms / 1000
        await send({"type": "http.response.start", "status": 200, "headers": _SSE})
        pending = [writer.role(i) for i in range(len(completion.replies))]
        for step in range(completion.steps):
            if b.cut_after is not None and step >= b.cut_after:
                await send({"type": "http.response.body", "body": "".join(pending).encode(), "more_body": True})
                self.events.append(FakeEvent("cut", ex.seq, ex.path, ex.stage, ex.chunks, time.monotonic()))
                return  # returning mid-response makes the server drop the connection: no [DONE]
            if delay and step:
                await send({"type": "http.response.body", "body": "".join(pending).encode(), "more_body": True})
                pending.clear()
                await asyncio.sleep(delay)
            for i, reply in enumerate(completion.replies):
                if step < len(reply):
                    pending.append(writer.content(i, reply[step]))
                    ex.tokens += 1
            ex.chunks += 1
        pending.append(writer.tail())
        for reason in completion.reasons:
            self._finished[reason] += 1
        ex.finishing = True
        await send({"type": "http.response.body", "body": "".join(pending).encode(), "more_body": False})

    async def _control(self, method: str, path: str, body: Any, send: Send) -> None:
        if (method, path) == ("POST", "/fake/behavior"):
            try:
                if not isinstance(body, dict):
                    raise ValueError("behavior: body must be a JSON object")
                self.behavior.update(body)
            except (ValueError, TypeError) as exc:
                await _send_json(send, 400, error_body(400, str(exc)))
                return
        if (method, path) in {("GET", "/fake/behavior"), ("POST", "/fake/behavior")}:
            await _send_json(send, 200, self.behavior.to_dict())
        elif (method, path) == ("POST", "/fake/reset"):
            self.reset()
            await _send_json(send, 200, self.behavior.to_dict())
        elif (method, path) == ("GET", "/fake/requests"):
            await _send_json(send, 200, [asdict(r) for r in list(self.requests)])
        elif (method, path) == ("GET", "/fake/events"):
            await _send_json(send, 200, [asdict(e) for e in list(self.events)])
        else:
            await _send_json(send, 404, error_body(404, f"no route {method} {path}"))

    def metrics_text(self) -> str:
        """Prometheus text imitating a few of vLLM's own metric names (not moa_*)."""
        label = f'{{model_name="{self.models[0]}"}}'
        lines = [
            ("vllm:num_requests_running", "gauge", f"{label} {self._running}"),
            ("vllm:num_requests_waiting", "gauge", f"{label} 0"),
            ("vllm:kv_cache_usage_perc", "gauge", f"{label} 0.0"),
            ("vllm:prompt_tokens", "counter", f"_total{label} {self._prompt_tokens}"),
            ("vllm:generation_tokens", "counter", f"_total{label} {self._generation_tokens}"),
            ("vllm:prefix_cache_queries", "counter", f"_total{label} {self._prompt_tokens}"),
            ("vllm:prefix_cache_hits", "counter", f"_total{label} 0"),
        ]
        out = [f"# TYPE {name} {kind}\n{name}{sample}\n" for name, kind, sample in lines]
        out.append("# TYPE vllm:request_success counter\n")
        out += [
            f'vllm:request_success_total{{model_name="{self.models[0]}",finished_reason="{reason}"}} {count}\n'
            for reason, count in self._finished.items()
        ]
        return "".join(out)


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _send_bytes(send: Send, status: int, data: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    headers = [*headers, (b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


async def _send_json(send: Send, status: int, obj: Any, extra: Sequence[tuple[bytes, bytes]] = ()) -> None:
    await _send_bytes(send, status, json.dumps(obj).encode(), _JSON + list(extra))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m moa_local.testing.fake_engine", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8199)
    parser.add_argument("--model", action="append", help="served model name (repeatable)")
    parser.add_argument("--tokens", type=int, default=8, help="filler words per reply")
    parser.add_argument("--template", default=Behavior.template, help="reply template")
    parser.add_argument("--token-delay-ms", type=float, default=0.0)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--max-records", type=int, default=10_000, help="requests/events kept in memory")
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)
    behavior = Behavior(
        tokens=args.tokens, template=args.template, token_delay_ms=args.token_delay_ms, latency_ms=args.latency_ms
    )
    import uvicorn  # here, not at import time: the module itself needs no server

    app = FakeEngine(args.model or ["fake"], behavior, max_records=args.max_records)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, access_log=False, lifespan="off")


if __name__ == "__main__":
    main()
