"""Hostile requests for the gateway, as hypothesis strategies grouped in families.

`FAMILIES` maps a family name to a strategy of `Case`s (`request_cases.py`,
with the exhaustive part of "every field with every wrong type"). Families:

- `valid`: well-formed chat bodies with random values (any text, NUL escapes,
  every honoured field), to mixtures, pass-throughs and unknown models;
- `wrong_types`: one field of a good body (nested ones too) set to a random
  JSON value of any type;
- `numbers`: NaN, infinities, huge and tiny numbers in the numeric fields;
- `nesting`: arrays and objects nested 10 to 100,000 deep, as the body or
  inside a field;
- `surrogates`: lone UTF-16 surrogates, escaped and as raw bytes, in every
  text field;
- `bytes`: raw NUL and control bytes, invalid UTF-8, BOMs, UTF-16 bodies,
  truncated and random bodies;
- `sizes`: bodies of 5 MB (inside and over the limit), with and without a
  content length;
- `routes`: every method on known and random paths;
- `headers`: random content types, request ids, authorizations and extra
  headers on a good request.

Left out on purpose: sending the cases and judging the answers
(`fuzz_target.py`).
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

from hypothesis import strategies as st

from tests.support.request_cases import (
    API_KEY,
    BIG,
    FIELDS,
    HELLO,
    KINDS,
    MIXTURE,
    NUMERIC,
    PASSTHROUGH,
    TEXT_FIELDS,
    Case,
    base_headers,
    chat,
    top,
    with_value,
)

# --- JSON values --------------------------------------------------------------------------------

SCALARS: dict[str, st.SearchStrategy[Any]] = {
    "null": st.none(),
    "bool": st.booleans(),
    "int": st.integers(),
    "float": st.floats(allow_nan=False, allow_infinity=False),
    "str": st.text(max_size=40),
}
json_values = st.recursive(
    st.one_of(*SCALARS.values()),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
KIND_VALUES: dict[str, st.SearchStrategy[Any]] = {
    **SCALARS,
    "list": st.lists(json_values, max_size=4),
    "object": st.dictionaries(st.text(max_size=8), json_values, max_size=4),
}
# --- families -----------------------------------------------------------------------------------


@st.composite
def valid_bodies(draw: st.DrawFn) -> Case:
    roles = st.sampled_from(["system", "developer", "user", "assistant"])
    content = (
        st.text(max_size=60)
        | st.just("a\x00b")
        | st.lists(
            st.fixed_dictionaries({"type": st.just("text"), "text": st.text(max_size=20)}), min_size=1, max_size=3
        )
    )
    messages = draw(st.lists(st.fixed_dictionaries({"role": roles, "content": content}), min_size=1, max_size=4))
    body: dict[str, Any] = {"model": draw(st.sampled_from([MIXTURE, "deep", PASSTHROUGH, "agg", "nope"])),
                            "messages": messages}  # fmt: skip
    optional = {
        "stream": st.booleans(), "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}),
        "max_tokens": st.integers(1, 4096), "temperature": st.floats(0, 2), "top_p": st.floats(0.01, 1),
        "stop": st.text(max_size=5) | st.lists(st.text(max_size=5), max_size=4),
        "seed": st.integers(-(2**63), 2**63), "user": st.text(max_size=20), "moa": st.just({"trace": True}),
        "n": st.just(1), "metadata": json_values,
    }  # fmt: skip
    for name in sorted(draw(st.sets(st.sampled_from(sorted(optional))))):  # sorted: set order varies by process
        body[name] = draw(optional[name])
    param = "model" if body["model"] == "nope" else None
    return chat(body, "valid", param, f"model={body['model']}")


@st.composite
def wrong_types(draw: st.DrawFn) -> Case:
    path = draw(st.sampled_from(FIELDS))
    kind = draw(st.sampled_from(KINDS))
    return chat(with_value(path, draw(KIND_VALUES[kind])), "wrong_types", top(path), f"{path}={kind}")


@st.composite
def numbers(draw: st.DrawFn) -> Case:
    path = draw(st.sampled_from(NUMERIC))
    special = st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999", "-0", "1e-400", "4.9e-324", "1E+2"])
    digits = st.integers(1, 4000).map(lambda n: "9" * n)  # Python refuses integers over 4300 digits
    literal = draw(special | digits | st.floats().map(repr).filter(lambda s: s not in ("nan", "inf", "-inf")))
    body = json.dumps(with_value(path, 0)).replace(f'"{path}": 0', f'"{path}": {literal}')
    return chat(body.encode(), "numbers", path, f"{path}={literal[:20]}")


@st.composite
def nesting(draw: st.DrawFn) -> Case:
    edges = st.sampled_from([10, 100, 500, 900, 990, 1000, 1100, 5000, 20_000, 100_000])
    depth = draw(edges | st.integers(2, 3000))
    opener, closer = draw(st.sampled_from([("[", "]"), ('{"a":', "}"), ('[{"a":', "}]")]))
    nested = opener * depth + "1" + closer * depth
    where = draw(st.sampled_from(["body", "messages", "messages.0.content", "metadata", "stop", "moa"]))
    if where == "body":
        return chat(nested.encode(), "nesting", None, f"depth {depth} as the body")
    key = where.split(".")[-1]
    body = json.dumps(with_value(where, 0)).replace(f'"{key}": 0', f'"{key}": {nested}')
    return chat(body.encode(), "nesting", None, f"depth {depth} in {where}")


@st.composite
def surrogates(draw: st.DrawFn) -> Case:
    path = draw(st.sampled_from(TEXT_FIELDS))
    code = draw(st.integers(0xD800, 0xDFFF))
    text = draw(st.text(max_size=5)) + "\x00" + draw(st.text(max_size=5))
    raw = draw(st.booleans())
    marker = "\u2603SURROGATE\u2603"
    body = json.dumps(with_value(path, text + marker), ensure_ascii=False)
    if raw:  # the surrogate's three bytes as UTF-8 would spell them (ED A0 80 for D800)
        data = body.encode().replace(marker.encode(), chr(code).encode("utf-8", "surrogatepass"))
    else:
        data = body.replace(marker, f"\\u{code:04x}").encode()
    return chat(data, "surrogates", top(path), f"{path} U+{code:04X} {'raw' if raw else 'escaped'}")


@st.composite
def bad_bytes(draw: st.DrawFn) -> Case:
    good = json.dumps({"model": MIXTURE, "messages": HELLO})
    how = draw(st.sampled_from(["insert", "utf16", "utf32", "bom", "truncate", "random", "empty", "nul-in-key"]))
    if how == "insert":
        junk = draw(st.sampled_from([b"\x00", b"\xff", b"\xc3\x28", b"\xc0\xaf", b"\xf8\x88\x80\x80\x80", b"\x01",
                                     b"\x1b[31m", b"\xef\xbf\xbf", b"\xe2\x82"]))  # fmt: skip
        at = good.index("hello") + draw(st.integers(0, 5))
        data = good[:at].encode() + junk + good[at:].encode()
    elif how in ("utf16", "utf32"):
        codec = f"utf-{how[3:]}"
        data = good.encode(draw(st.sampled_from([codec, f"{codec}-le", f"{codec}-be"])))
    elif how == "bom":
        data = b"\xef\xbb\xbf" + good.encode()
    elif how == "truncate":
        data = good.encode()[: draw(st.integers(0, len(good) - 1))]
    elif how == "random":
        data = draw(st.binary(max_size=200))
    elif how == "empty":
        data = b""
    else:
        data = good.replace('"model"', '"mo\\u0000del"').encode()
    return chat(data, "bytes", None, how)


def sizes() -> st.SearchStrategy[Case]:
    def build(kind: str) -> Case:
        if kind == "content":
            body = {"model": PASSTHROUGH, "messages": [{"role": "user", "content": "w " * (BIG // 2)}]}
            return chat(body, "sizes", None, "5 MB of content")
        if kind == "parts":
            parts = [{"type": "text", "text": "x" * 1000}] * (BIG // 1030)
            return chat({"model": PASSTHROUGH, "messages": [{"role": "user", "content": parts}]}, "sizes", None,
                        "5 MB of content parts")  # fmt: skip
        if kind == "spaces":
            return chat(b" " * BIG + json.dumps({"model": MIXTURE, "messages": HELLO}).encode(), "sizes", None,
                        "5 MB of whitespace")  # fmt: skip
        if kind == "metadata":
            return chat({"model": MIXTURE, "messages": HELLO, "metadata": {"k": [0] * (BIG // 2)}}, "sizes", None,
                        "5 MB of ignored metadata")  # fmt: skip
        if kind == "messages":
            many = [{"role": "user", "content": "hi"}] * (BIG // 32)
            return chat({"model": MIXTURE, "messages": many}, "sizes", None, "160,000 messages")
        over = {"model": MIXTURE, "messages": [{"role": "user", "content": "x" * (2 * BIG)}]}
        return chat(over, "sizes", None, "10 MB, over the limit", chunked=kind == "over-chunked")

    return st.sampled_from(["content", "parts", "spaces", "metadata", "messages", "over", "over-chunked"]).map(build)


ROUTES = ("/v1/chat/completions", "/v1/models", "/v1/models/mix", "/v1/models/nope", "/health", "/ready",
          "/metrics", "/", "/v1", "/v1/completions", "/v1/embeddings", "/v1/models/", "/v1/models/a/b",
          "/fake/behavior", "/v1/chat/completions/", "//v1//models", "/v1/models/%00", "/v1/models/%ff%fe")  # fmt: skip
METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "TRACE", "PROPFIND", "BREW")
# Methods uvicorn's HTTP parser does not know: it answers 400 itself, before any application sees the request.
PARSER_REFUSES = frozenset({"BREW"})


@st.composite
def routes(draw: st.DrawFn) -> Case:
    method = draw(st.sampled_from(METHODS))
    segment = st.text(st.characters(codec="utf-8", exclude_characters="/?#"), min_size=1, max_size=30)
    random_path = st.lists(segment.map(lambda part: quote(part, safe="")), min_size=1, max_size=4).map(
        lambda parts: "/" + "/".join(parts)
    )
    path = draw(st.sampled_from(ROUTES) | random_path | random_path.map(lambda p: "/v1/models" + p))
    good = json.dumps({"model": MIXTURE, "messages": HELLO}).encode()
    body = draw(st.just(b"") | st.binary(max_size=64) | st.just(good))
    return Case("routes", method, path, body, base_headers(), None, f"{method} {path[:40]}")


@st.composite
def headers(draw: st.DrawFn) -> Case:
    # Header values as HTTP allows them: visible ASCII and bytes 0x80-0xFF (sent as latin-1), inner spaces.
    text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=80)
    text = text.map(str.strip)
    chosen = base_headers()
    auth = draw(st.sampled_from(["good", "none", "wrong", "scheme", "random", "huge", "lower"]))
    values = {"wrong": "Bearer sk-wrong", "scheme": f"Basic {API_KEY}", "huge": "Bearer " + "k" * 8000,
              "lower": f"bearer {API_KEY}"}  # fmt: skip
    if auth == "none":
        del chosen["authorization"]
    elif auth == "random":
        chosen["authorization"] = draw(text)
    elif auth != "good":
        chosen["authorization"] = values[auth]
    content_types = ["application/json", "text/plain", "application/x-www-form-urlencoded", "multipart/form-data",
                     "application/json; charset=latin-1", "", "*/*"]  # fmt: skip
    chosen["content-type"] = draw(st.sampled_from(content_types) | text)
    if draw(st.booleans()):
        chosen["x-request-id"] = draw(text | st.sampled_from(["ok-id.1", "x" * 65, "../../etc", "a b", "ünï"]))
    for name in draw(st.lists(st.from_regex(r"\Ax-[a-z0-9-]{1,20}\Z"), max_size=3)):
        chosen[name] = draw(text)
    if draw(st.booleans()):
        chosen["content-encoding"] = draw(st.sampled_from(["gzip", "br", "identity", "bogus"]))
    if draw(st.booleans()):
        chosen["accept"] = draw(st.sampled_from(["text/event-stream", "application/xml", "*/*"]))
    stream = draw(st.booleans())
    body = json.dumps({"model": MIXTURE, "messages": HELLO, "stream": stream}).encode()
    return Case("headers", "POST", "/v1/chat/completions", body, chosen, None, f"auth={auth}")


FAMILIES: dict[str, st.SearchStrategy[Case]] = {
    "valid": valid_bodies(),
    "wrong_types": wrong_types(),
    "numbers": numbers(),
    "nesting": nesting(),
    "surrogates": surrogates(),
    "bytes": bad_bytes(),
    "sizes": sizes(),
    "routes": routes(),
    "headers": headers(),
}
