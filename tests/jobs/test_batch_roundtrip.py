"""A batch file through `api/completion.complete` and the runner against fake engines, checked against the gateway.

The fakes answer deterministically ("<model> re <prompt>: w1 w2 w3"), so
every output body can be compared with what the gateway itself answers to
the same request body (a fake on purpose: this is about the format and the
exact bodies, not about models).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from moa_local.api.completion import complete
from moa_local.engines.pool import EndpointPool
from moa_local.jobs import BatchRunner, ResultFile, check_input, read_input
from moa_local.metrics import Metrics
from moa_local.mixture.pipeline import Pipeline
from tests.support.gateway_fixtures import Stack, post

CHAT = "/v1/chat/completions"
TIMINGS = {"latency_s", "ttft_s", "duration_s", "overhead_s"}


def request(custom_id: Any, body: Any, **fields: Any) -> str:
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": CHAT, "body": body, **fields})


def ask(model: str, prompt: str, **fields: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": prompt}], **fields}


VALID = {
    "mix-1": ask("mix", "one"),
    "deep-traced": ask("deep", "two", moa={"trace": True}),
    "pass-p1": ask("p1", "three", max_tokens=5, temperature=0.2),
    "pass-agg-traced": ask("agg", "four", moa={"trace": True}, stream=False),
}
REFUSED = {  # bodies the gateway refuses: the batch must answer exactly as it does
    "unknown-model": ask("nope", "x"),
    "n-2": ask("mix", "x", n=2),
    "hot": ask("mix", "x", temperature=5),
}
LINES = [
    request("mix-1", VALID["mix-1"]),
    "{oops",
    request("deep-traced", VALID["deep-traced"]),
    "",
    '["not", "an", "object"]',
    request(None, ask("mix", "x")),
    request(7, ask("mix", "x")),
    request("mix-1", ask("mix", "again")),
    request("get", ask("mix", "x"), method="GET"),
    request("embed", ask("mix", "x"), url="/v1/embeddings"),
    request("no-body", None),
    request("streamed", ask("mix", "x", stream=True)),
    request("pass-p1", VALID["pass-p1"]),
    request("unknown-model", REFUSED["unknown-model"]),
    request("n-2", REFUSED["n-2"]),
    request("hot", REFUSED["hot"]),
    request("pass-agg-traced", VALID["pass-agg-traced"]),
]
BAD_LINES = {  # line number -> (custom_id, code, message)
    2: (None, "invalid_json", "line 2: not valid JSON (Expecting property name enclosed in double quotes at column 2)"),
    5: (None, "invalid_json", "line 5: expected a JSON object, got an array"),
    6: (None, "missing_custom_id", "line 6: 'custom_id' is required"),
    7: (None, "invalid_custom_id", "line 7: 'custom_id' must be a non-empty string (got 7)"),
    8: ("mix-1", "duplicate_custom_id", 'line 8: duplicate custom_id "mix-1" (first on line 1)'),
    9: ("get", "invalid_method", "line 9: 'method' must be \"POST\" (got \"GET\")"),
    10: ("embed", "invalid_url", "line 10: 'url' must be \"/v1/chat/completions\" (got \"/v1/embeddings\")"),
    11: ("no-body", "invalid_body", "line 11: 'body' is required"),
    12: ("streamed", "invalid_body", "line 12: 'body.stream' must be absent or false in a batch"),
    14: ("unknown-model", "model_not_found", "line 14: no mixture or endpoint 'nope' (known: mix, deep, p1, p2, agg)"),
    15: ("n-2", "invalid_request_error", "line 15: 'n' is not supported by moa-local (got 2)"),
    16: ("hot", "invalid_request_error", "line 16: temperature: Input should be less than or equal to 2 (got 5)"),
}


def without_timings(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: without_timings(v) for k, v in value.items() if k not in TIMINGS}
    if isinstance(value, list):
        return [without_timings(v) for v in value]
    return value


def comparable(body: dict[str, Any]) -> dict[str, Any]:
    """A completion body without what differs between two answers to one request (id, time, timings)."""
    assert body["id"].startswith("chatcmpl-") and isinstance(body["created"], int)
    return without_timings({k: v for k, v in body.items() if k not in ("id", "created")})


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


async def run_batch(stack: Stack, source: Path, out: Path, errors: Path) -> None:
    config, metrics = stack.gw.config, Metrics()
    async with EndpointPool(config.endpoints, metrics) as pool:
        pipeline = Pipeline(pool, metrics)

        async def execute(body: dict[str, Any], request_id: str) -> tuple[int, dict[str, Any]]:
            return await complete(config, pipeline, body, request_id, priority="batch")

        runner = BatchRunner(execute, ResultFile(out), ResultFile(errors), max_inflight=4)
        progress = await runner.run(read_input(source), check_input(source))
    assert (progress.ok, progress.failed, progress.invalid, progress.remaining) == (4, 3, 9, 0)


async def test_fault_batch_round_trip_answers_as_the_gateway_and_names_each_bad_line(
    stack: Stack, tmp_path: Path
) -> None:
    source, out, errors = tmp_path / "in.jsonl", tmp_path / "out.jsonl", tmp_path / "errors.jsonl"
    source.write_text("\n".join(LINES) + "\n", encoding="utf-8")
    await run_batch(stack, source, out, errors)

    answered = records(out)
    assert sorted(r["custom_id"] for r in answered) == sorted(VALID)  # the valid inputs, once each
    for record in answered:
        assert record["id"].startswith("batch_req_") and record["error"] is None
        response = record["response"]
        assert response["status_code"] == 200 and response["request_id"]
        gateway = post(stack.gw, VALID[record["custom_id"]])
        assert gateway.status_code == 200
        assert comparable(response["body"]) == comparable(gateway.json())
    by_id = {r["custom_id"]: r["response"]["body"] for r in answered}
    assert by_id["mix-1"]["choices"][0]["message"]["content"] == "agg-model re one: w1 w2 w3"
    assert "moa" not in by_id["mix-1"] and "moa" not in by_id["pass-p1"]
    assert [layer["proposals_used"] for layer in by_id["deep-traced"]["moa"]["layers"]] == [2, 1]
    sent = next(b for b in stack.p1.chat_bodies() if b["messages"] == VALID["pass-p1"]["messages"])
    assert (sent["max_tokens"], sent["temperature"], by_id["pass-p1"]["usage"]["completion_tokens"]) == (5, 0.2, 5)

    failures = records(errors)
    lines = {int(r["error"]["message"].split(":")[0].removeprefix("line ")): r for r in failures}
    assert len(lines) == len(failures) == len(BAD_LINES)
    for line_no, (custom_id, code, message) in BAD_LINES.items():
        record = lines[line_no]
        assert (record["custom_id"], record["error"]) == (custom_id, {"code": code, "message": message}), line_no
        assert record["id"].startswith("batch_req_")
        if custom_id in REFUSED:  # it ran: the response is exactly the gateway's refusal
            gateway = post(stack.gw, REFUSED[custom_id])
            assert (record["response"]["status_code"], record["response"]["body"]) == (
                gateway.status_code, gateway.json(),
            )  # fmt: skip
        else:
            assert record["response"] is None
