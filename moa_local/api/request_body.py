"""A request body, read and decoded within bounds: bytes, seconds, nesting, text.

`read_body` takes a body off ASGI `receive` within a byte limit (413) and a
time limit (408), so a slow upload is bounded. `decode_json` turns it into JSON, refusing what would break
something further down with a 400 naming the field by its dotted path:
nesting deeper than `MAX_DEPTH` (json's recursion, and every walk after it),
and text that is not valid Unicode: a lone UTF-16 surrogate (the escape
`"\\ud800"`) or bytes that are not UTF-8 (among them the raw surrogate
`ED A0 80`), which no engine request could encode. What the fields mean is
left to `protocol.py`; when to read and what to answer, to the chat route.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

from starlette.requests import ClientDisconnect
from starlette.types import Receive

from moa_local.api.error_response import body_timeout
from moa_local.errors import InvalidRequest, PayloadTooLarge

MAX_DEPTH = 32  # a chat request needs 4 (messages.0.content.0); json itself gives up near 1000
# Undecodable bytes become lone surrogates (U+DC80..U+DCFF), so one check finds both faults.
_SURROGATE = re.compile("[\ud800-\udfff]")
_SUSPECT = re.compile(r"[\ud800-\udfff]|\\u[dD][89a-fA-F]")  # the raw text, before json unescapes it
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_PARENS = bytes.maketrans(b"[{]}", b"(())")
_NOT_BRACKETS = bytes(set(range(256)) - set(b"[]{}"))
_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{},:]', re.DOTALL)

Path = tuple[str | int, ...]


async def read_body(receive: Receive, declared: str, limit: int, timeout_s: float) -> bytes:
    """The whole body, at most `limit` bytes, arriving within `timeout_s`; `declared` is its content-length."""
    if declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body is {declared} bytes; the limit is {limit}")
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise ClientDisconnect()
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLarge(f"request body is over the {limit}-byte limit")
                chunks.append(chunk)
                if not message.get("more_body", False):
                    return b"".join(chunks)
    except TimeoutError:
        raise body_timeout(timeout_s) from None


def decode_json(body: bytes) -> Any:
    """The JSON value of `body` (UTF-8), with no nesting over MAX_DEPTH and no invalid text anywhere."""
    text = body.decode("utf-8-sig", "surrogateescape")
    try:
        value = json.loads(text)
    except RecursionError:  # nested ~1000 deep: name where it passed our own limit
        raise _too_deep(_deep_path(text)) from None
    except json.JSONDecodeError as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from None
    except ValueError:  # valid syntax Python will not read: an integer of more than 4,300 digits
        raise _out_of_range(text) from None
    # The walk (Python) names the field; C-speed scans of the text decide whether it is needed.
    if _SUSPECT.search(text) or (text.count("[") + text.count("{") > MAX_DEPTH and _nested_too_deep(text)):
        _inspect(value)
    return value


def _nested_too_deep(text: str) -> bool:
    """Whether valid JSON `text` nests deeper than MAX_DEPTH: strip the innermost containers that many times."""
    shape = _STRING.sub("", text).encode("utf-8", "surrogatepass").translate(_PARENS, _NOT_BRACKETS)
    for _ in range(MAX_DEPTH):
        if not shape:
            return False
        shape = shape.replace(b"()", b"")
    return bool(shape)


def _inspect(value: Any) -> None:
    """Walk `value` (without recursion), raising at the first container too deep or text not valid Unicode."""
    if isinstance(value, str):
        _check_text(value, ())
    if not isinstance(value, (dict, list)):
        return
    stack: list[tuple[Any, Path]] = [(value, ())]
    while stack:
        node, path = stack.pop()
        if len(path) >= MAX_DEPTH:
            raise _too_deep(path)
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for key, item in items:
            if isinstance(key, str):
                _check_text(key, (*path, key))
            if isinstance(item, str):
                if not item.isascii():  # the path is built only for the rare string that needs a look
                    _check_text(item, (*path, key))
            elif isinstance(item, (dict, list)):
                stack.append((item, (*path, key)))


def _check_text(text: str, path: Path) -> None:
    if not text.isascii() and _SURROGATE.search(text):
        where = _dotted(path) or "body"
        raise InvalidRequest(
            f"{where}: text is not valid Unicode (a lone UTF-16 surrogate such as \\ud800, or bytes that are "
            f"not UTF-8)", param=_dotted(path) or None,
        )  # fmt: skip


def _deep_path(text: str) -> Path:
    """The path of the first container nested deeper than MAX_DEPTH, read off the raw JSON text."""
    open_: list[tuple[bool, list[str | int]]] = []  # per open container: (is an array, [its current key])
    expect_key = False
    for token in _TOKEN.finditer(text):
        mark = token.group()
        if mark in ("[", "{"):
            if len(open_) >= MAX_DEPTH:
                return tuple(current[0] for _, current in open_)
            open_.append((mark == "[", [0]))
        elif mark in ("]", "}"):
            if open_:
                open_.pop()
        elif mark == "," and open_ and open_[-1][0]:
            index = open_[-1][1]
            index[0] = int(index[0]) + 1
        elif expect_key and open_:
            open_[-1][1][0] = _key(mark)
        expect_key = (mark == "{") or (mark == "," and bool(open_) and not open_[-1][0])
    return ()


def _key(token: str) -> str:
    try:
        return str(json.loads(token))
    except ValueError:
        return token[1:-1]


def _too_deep(path: Path) -> InvalidRequest:
    where = _dotted(path) or "body"
    return InvalidRequest(f"{where}: nested deeper than {MAX_DEPTH} levels", param=_dotted(path) or None)


def _dotted(path: Path) -> str:
    return ".".join(str(part) for part in path)



class _LongInteger:
    def __init__(self, digits: int) -> None:
        self.digits = digits


def _out_of_range(text: str) -> InvalidRequest:
    """Name the integer too long for Python to read (parsed again, rare: only after such a failure)."""

    def integer(literal: str) -> Any:
        return int(literal) if len(literal) <= 4000 else _LongInteger(len(literal))

    try:
        value = json.loads(text, parse_int=integer)
    except ValueError as exc:
        return InvalidRequest(f"request body is not valid JSON: {exc}")
    stack: list[tuple[Any, Path]] = [(value, ())]
    while stack:
        node, path = stack.pop()
        if isinstance(node, _LongInteger):
            where = _dotted(path) or "body"
            return InvalidRequest(f"{where}: an integer of {node.digits} digits is out of range",
                                  param=_dotted(path) or None)  # fmt: skip
        if isinstance(node, dict):
            stack.extend((item, (*path, key)) for key, item in node.items())
        elif isinstance(node, list):
            stack.extend((item, (*path, i)) for i, item in enumerate(node))
    return InvalidRequest("request body holds a number out of range")
