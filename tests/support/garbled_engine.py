"""The fake engine, plus answers that are not the protocol at all: malformed SSE, garbage JSON, wrong shapes.

`GarbledEngine` wraps `moa_local.testing.fake_engine.FakeEngine` (every knob
of its `Behavior`: latency, hangs, error statuses with Retry-After, streams
cut mid-way) and adds one more, the garble mode, set over HTTP with
`POST /fake/garble {"mode": ...}` (`"none"` to stop) and cleared by
`POST /fake/reset`. While a mode is set, every chat completion gets that
mode's answer instead of the fake's:

- `sse-broken-json`: a good first event, then a data line cut mid-JSON;
- `sse-no-data`: an event stream of comments and named events, no data;
- `json-garbage`: a 200 JSON body that is not JSON, instead of a stream;
- `html`: a 200 HTML error page, as a misconfigured proxy would send;
- `bytes`: a 200 of binary noise (invalid UTF-8, NULs, newlines);
- `shape-list`: well-formed events that are JSON arrays;
- `shape-content-int`: a delta whose `content` is a number;
- `shape-usage-str`: a good answer whose `usage` counts are strings;
- `shape-index-str`: choices whose `index` is a string.

Run it as its own process (what the chaos tests and scripts do):

    python -m tests.support.garbled_engine --port 8199 --model a

Left out on purpose: faults below HTTP (the process can be killed for that).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

from moa_local.testing.behavior import Behavior
from moa_local.testing.fake_engine import FakeEngine, Message, Receive, Send

_DONE = b"data: [DONE]\n\n"


def _event(obj: Any) -> bytes:
    return f"data: {json.dumps(obj)}\n\n".encode()


def _chunk(delta: dict[str, Any], finish: str | None = None, index: Any = 0, **extra: Any) -> bytes:
    choice = {"index": index, "delta": delta, "finish_reason": finish}
    return _event({"id": "chatcmpl-garbled", "object": "chat.completion.chunk", "choices": [choice], **extra})


MODES: dict[str, tuple[bytes, bytes]] = {  # mode -> (content type, body)
    "sse-broken-json": (b"text/event-stream", _chunk({"role": "assistant", "content": ""})
                        + b'data: {"choices": [{"index": 0, "delta": {"content": "ha\n\n' + _DONE),
    "sse-no-data": (b"text/event-stream", b": keep-alive\n\nevent: ping\nid: 1\n\nretry: 10\n\n" + _DONE),
    "json-garbage": (b"application/json", b'{"id": "x", "choices": [{"message": {"content": nope'),
    "html": (b"text/html", b"<html><body><h1>502 Bad Gateway</h1>nginx</body></html>"),
    "bytes": (b"application/octet-stream", bytes(range(256)) * 4 + b"\xff\xfe\x00\ndata: \xc3\x28\n\n"),
    "shape-list": (b"text/event-stream", b"data: [1, 2, 3]\n\ndata: []\n\n" + _DONE),
    "shape-content-int": (b"text/event-stream", _chunk({"content": 5}) + _chunk({}, "stop") + _DONE),
    "shape-usage-str": (b"text/event-stream", _chunk({"content": "fine"}) + _chunk({}, "stop")
                        + _event({"choices": [], "usage": {"prompt_tokens": "many", "completion_tokens": [1]}})
                        + _DONE),
    "shape-index-str": (b"text/event-stream", _chunk({"content": "odd"}, index="0")
                        + _chunk({}, "stop", index="0") + _DONE),
}  # fmt: skip


class GarbledEngine:
    """The fake engine's ASGI app with a garble mode in front of its chat completions."""

    def __init__(self, engine: FakeEngine) -> None:
        self.engine = engine
        self.mode = "none"

    async def __call__(self, scope: Message, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.engine(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        if (method, path) == ("POST", "/fake/garble"):
            await self._set_mode(receive, send)
        elif (method, path) == ("POST", "/v1/chat/completions") and self.mode != "none":
            while (await receive()).get("more_body"):
                pass
            content_type, body = MODES[self.mode]
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", content_type)]})
            await send({"type": "http.response.body", "body": body})
        else:
            if (method, path) == ("POST", "/fake/reset"):
                self.mode = "none"
            await self.engine(scope, receive, send)

    async def _set_mode(self, receive: Receive, send: Send) -> None:
        raw = b""
        while True:
            message = await receive()
            raw += message.get("body", b"")
            if not message.get("more_body"):
                break
        try:
            mode = json.loads(raw)["mode"]
        except (ValueError, KeyError, TypeError):
            mode = None
        ok = mode == "none" or mode in MODES
        if ok:
            self.mode = mode
        body = json.dumps({"mode": self.mode} if ok else {"error": f"modes: none, {', '.join(MODES)}"}).encode()
        await send({"type": "http.response.start", "status": 200 if ok else 400,
                    "headers": [(b"content-type", b"application/json")]})  # fmt: skip
        await send({"type": "http.response.body", "body": body})


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.support.garbled_engine", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", action="append", help="served model name (repeatable)")
    parser.add_argument("--tokens", type=int, default=8, help="filler words per reply")
    parser.add_argument("--token-delay-ms", type=float, default=0.0)
    args = parser.parse_args(argv)
    import uvicorn

    behavior = Behavior(tokens=args.tokens, token_delay_ms=args.token_delay_ms)
    app = GarbledEngine(FakeEngine(args.model or ["fake"], behavior, max_records=2_000))
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False, lifespan="off")


if __name__ == "__main__":
    main()
