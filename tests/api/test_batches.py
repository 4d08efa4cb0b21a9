"""The Batch API on the gateway (`/v1/batches`), driven by the real openai SDK over loopback, with fake engines.

A batch's output lines must carry exactly what the gateway answers the
same request interactively; every custom_id appears once across the output
and error files, also when the gateway is killed mid-batch and restarted
(the gateway runs as a `moa-local serve` process there). Faults come from
the controllable fake engines.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from moa_local.api.protocol import parse_chat_body
from moa_local.config import load_config
from moa_local.jobs.format import BatchItem, check_input, read_input
from tests.support.batch_inputs import jsonl, request, results, wait_batch, wait_until
from tests.support.engine_fixtures import free_port
from tests.support.fake_fixtures import FakeEngineFactory
from tests.support.gateway_fixtures import Stack, StackFactory, error_of, fake_config, post

ROOT = Path(__file__).resolve().parents[2]
CHAT = "/v1/chat/completions"


@pytest.fixture
def stack(own_stack: StackFactory, tmp_path: Path) -> Stack:
    """The standard fake stack (mixtures "mix" and "deep", endpoints p1, p2, agg) keeping batches in tmp_path."""
    return own_stack({"data_dir": str(tmp_path / "data")})


def start_batch(client: openai.OpenAI, data: bytes, **extra: Any) -> str:
    uploaded = client.files.create(file=("input.jsonl", data), purpose="batch")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint=CHAT, completion_window="24h", **extra)
    return batch.id


def custom_ids(*files: list[dict[str, Any]]) -> Counter[str]:
    return Counter(record["custom_id"] for lines in files for record in lines)


def test_sdk_runs_a_batch_whose_lines_are_the_gateways_answers(stack: Stack) -> None:
    client = stack.gw.client()
    data = jsonl(
        request("q-mix", "mix", "hello", moa={"trace": True}), request("q-pass", "p1", "hi"),
        request("q-deep", "deep", "hey", max_tokens=16),
    )  # fmt: skip
    uploaded = client.files.create(file=("prompts.jsonl", data), purpose="batch")
    assert (uploaded.purpose, uploaded.bytes, uploaded.filename) == ("batch", len(data), "prompts.jsonl")
    created = client.batches.create(
        input_file_id=uploaded.id, endpoint=CHAT, completion_window="24h", metadata={"run": "t1"}
    )
    assert created.status == "validating" and created.metadata == {"run": "t1"}
    assert created.input_file_id == uploaded.id and created.expires_at == created.created_at + 24 * 3600

    batch = wait_batch(client, created.id)
    assert batch.status == "completed", batch.errors
    assert batch.request_counts is not None
    assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (3, 3, 0)
    assert batch.error_file_id is None and batch.output_file_id is not None
    assert batch.in_progress_at is not None and batch.completed_at is not None
    assert created.created_at <= batch.in_progress_at <= batch.completed_at

    output, errors = results(client, batch)
    assert errors == [] and custom_ids(output) == {"q-mix": 1, "q-pass": 1, "q-deep": 1}
    by_id = {record["custom_id"]: record for record in output}
    for record in output:
        assert set(record) == {"id", "custom_id", "response", "error"} and record["error"] is None
        assert record["id"].startswith("batch_req_") and record["response"]["status_code"] == 200
    # Each body is what the gateway answers the same request interactively (ids and times aside).
    trace: dict[str, Any] = {"moa": {"trace": True}}
    for custom_id, model, prompt, extra in (("q-pass", "p1", "hi", {}), ("q-mix", "mix", "hello", trace)):
        body = by_id[custom_id]["response"]["body"]
        live = post(stack.gw, {"model": model, "messages": [{"role": "user", "content": prompt}], **extra}).json()
        assert body["object"] == "chat.completion" and body["model"] == model
        assert body["choices"] == live["choices"] and body["usage"] == live["usage"]
        assert ("moa" in body) == bool(extra)
    assert by_id["q-deep"]["response"]["body"]["choices"][0]["message"]["content"].startswith("agg-model re hey")

    assert created.id in [b.id for b in client.batches.list()]
    assert client.files.retrieve(batch.output_file_id).purpose == "batch_output"
    assert stack.gw.metric("moa_batches", status="completed") == 1
    assert stack.gw.metric("moa_batches", status="in_progress") == 0
    assert stack.gw.metric("moa_batch_requests_total", outcome="ok") == 3


def test_bad_lines_go_to_the_error_file_with_their_line_and_the_batch_completes(stack: Stack) -> None:
    client = stack.gw.client()
    good = request("ok", "p1", "hi")
    data = jsonl(
        good,  # 1
        "{not json",  # 2
        {**good},  # 3: duplicate custom_id
        {k: v for k, v in good.items() if k != "custom_id"},  # 4
        {**good, "custom_id": "get", "method": "GET"},  # 5
        {**good, "custom_id": "url", "url": "/v1/completions"},  # 6
        request("unknown-model", "nope", "hi"),  # 7
        request("stream", "p1", "hi", stream=True),  # 8
        request("hot", "p1", "hi", temperature=5),  # 9
    )  # fmt: skip
    batch = wait_batch(client, start_batch(client, data))
    assert batch.status == "completed" and batch.request_counts is not None
    assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (9, 1, 8)
    output, errors = results(client, batch)
    assert [record["custom_id"] for record in output] == ["ok"]
    by_line = {int(record["error"]["message"].split(":")[0].removeprefix("line ")): record for record in errors}
    assert sorted(by_line) == [2, 3, 4, 5, 6, 7, 8, 9]
    expected = {
        2: (None, "invalid_json"), 3: ("ok", "duplicate_custom_id"), 4: (None, "missing_custom_id"),
        5: ("get", "invalid_method"), 6: ("url", "invalid_url"), 7: ("unknown-model", "model_not_found"),
        8: ("stream", "invalid_body"), 9: ("hot", "invalid_request_error"),
    }  # fmt: skip
    assert {line: (r["custom_id"], r["error"]["code"]) for line, r in by_line.items()} == expected
    # A request the gateway refused carries its answer: the status and the OpenAI envelope naming the field.
    refused = by_line[9]["response"]
    assert refused["status_code"] == 400 and refused["body"]["error"]["param"] == "temperature"
    assert by_line[7]["response"]["status_code"] == 404 and by_line[2]["response"] is None
    assert len(stack.p1.chat_bodies()) == 1  # bad lines never reach an engine


def test_fault_backend_failing_half_the_calls_lands_in_the_error_file(stack: Stack) -> None:
    client = stack.gw.client()
    stack.p1.set(status=500, error_message="engine exploded", times=5)  # the first 5 calls fail, then it recovers
    lines = [request(f"r{i}", "p1", f"prompt {i}") for i in range(10)]
    batch = wait_batch(client, start_batch(client, jsonl(*lines)))
    assert batch.status == "completed" and batch.request_counts is not None
    assert (batch.request_counts.completed, batch.request_counts.failed) == (5, 5)
    output, errors = results(client, batch)
    assert custom_ids(output, errors) == {f"r{i}": 1 for i in range(10)}
    for record in errors:
        assert record["error"]["code"] == "backend_failed"
        assert record["error"]["message"].endswith("p1: engine answered 500: engine exploded")
        assert record["response"]["status_code"] == 502
        assert record["response"]["body"]["error"]["type"] == "backend_error"
    assert stack.gw.metric("moa_batch_requests_total", outcome="error") == 5


def test_fault_cancel_stops_a_running_batch_and_closes_its_calls(stack: Stack) -> None:
    client = stack.gw.client()
    stack.p1.set(hang=True)
    batch_id = start_batch(client, jsonl(*(request(f"h{i}", "p1", "wait") for i in range(4))))
    wait_until(lambda: len(stack.p1.chat_bodies()) > 0, what="a batch call reached the engine")
    running = client.batches.retrieve(batch_id)
    assert running.status == "in_progress"
    refused = stack.gw.http.delete(f"/v1/files/{running.input_file_id}")  # the batch still reads it
    assert refused.status_code == 400 and error_of(refused)["param"] == "file_id"

    assert client.batches.cancel(batch_id).status in ("cancelling", "cancelled")
    batch = wait_batch(client, batch_id)
    assert batch.status == "cancelled" and batch.cancelling_at is not None and batch.cancelled_at is not None
    assert batch.request_counts is not None and batch.request_counts.completed == 0
    stack.p1.wait_for_event("disconnect")  # the hanging upstream call was closed
    assert client.batches.cancel(batch_id).status == "cancelled"  # again: nothing changes
    stack.p1.set(hang=False)
    done = wait_batch(client, start_batch(client, jsonl(request("x", "p1", "hi"))))
    with pytest.raises(openai.BadRequestError, match="is completed"):
        client.batches.cancel(done.id)


@pytest.mark.parametrize(
    ("change", "status", "param"),
    [
        ({"endpoint": "/v1/embeddings"}, 400, "endpoint"),
        ({"completion_window": "1h"}, 400, "completion_window"),
        ({"input_file_id": "file-nope"}, 404, "input_file_id"),
        ({"input_file_id": None}, 400, "input_file_id"),
        ({"metadata": {"k": 1}}, 400, "metadata"),
        ({"priority": "high"}, 400, "priority"),
    ],
)
def test_create_refusals_name_the_field(stack: Stack, change: dict[str, Any], status: int, param: str) -> None:
    uploaded = stack.gw.client().files.create(file=("in.jsonl", jsonl(request("a", "p1", "hi"))), purpose="batch")
    body = {"input_file_id": uploaded.id, "endpoint": CHAT, "completion_window": "24h", **change}
    answer = stack.gw.http.post("/v1/batches", json={k: v for k, v in body.items() if v is not None})
    assert answer.status_code == status
    error = error_of(answer)
    assert error["param"] == param and param in error["message"]


def test_unknown_batches_and_other_refusals(stack: Stack) -> None:
    http = stack.gw.http
    for answer in (http.get("/v1/batches/batch_nope"), http.post("/v1/batches/batch_nope/cancel")):
        assert answer.status_code == 404 and error_of(answer)["param"] == "batch_id"
    assert error_of(http.post("/v1/batches", content=b"{oops"))["message"] == "request body is not valid JSON"
    assert http.get("/v1/batches", params={"limit": "0"}).status_code == 400
    client = stack.gw.client()
    output_id = wait_batch(client, start_batch(client, jsonl(request("a", "p1", "hi")))).output_file_id
    reused = http.post("/v1/batches", json={"input_file_id": output_id, "endpoint": CHAT, "completion_window": "24h"})
    assert reused.status_code == 400 and "purpose 'batch_output'" in error_of(reused)["message"]


def test_batches_list_newest_first_in_pages(stack: Stack) -> None:
    client = stack.gw.client()
    uploaded = client.files.create(file=("in.jsonl", jsonl(request("a", "p1", "hi"))), purpose="batch")
    ids = [client.batches.create(input_file_id=uploaded.id, endpoint=CHAT, completion_window="24h").id
           for _ in range(3)]  # fmt: skip
    first = client.batches.list(limit=2)
    assert [b.id for b in first.data] == ids[:0:-1] and first.has_more
    rest = client.batches.list(limit=2, after=first.data[-1].id)
    assert [b.id for b in rest.data] == ids[:1] and not rest.has_more
    assert [b.id for b in client.batches.list(limit=1)] == ids[::-1]  # the SDK follows the pages


def test_a_batch_is_visible_only_to_the_key_that_created_it(
    own_stack: StackFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MOA_TEST_BATCH_KEYS", "key-a,key-b")
    gw = own_stack({"data_dir": str(tmp_path / "data"), "api_keys_env": "MOA_TEST_BATCH_KEYS"}).gw
    a, b = gw.client(api_key="key-a"), gw.client(api_key="key-b")
    batch = wait_batch(a, start_batch(a, jsonl(request("a", "p1", "hi"))))
    assert batch.status == "completed" and batch.output_file_id is not None
    for call in (lambda: b.batches.retrieve(batch.id), lambda: b.batches.cancel(batch.id),
                 lambda: b.files.retrieve(batch.input_file_id), lambda: b.files.content(batch.output_file_id),
                 lambda: b.files.delete(batch.output_file_id)):  # fmt: skip
        with pytest.raises(openai.NotFoundError):
            call()
    assert b.batches.list().data == [] and b.files.list().data == []
    assert [x.id for x in a.batches.list()] == [batch.id] and len(a.files.list().data) == 2
    assert gw.http.get("/v1/batches").status_code == 401  # no key at all


def test_fault_gateway_killed_mid_batch_resumes_on_restart(fake_engine: FakeEngineFactory, tmp_path: Path) -> None:
    """SIGKILL the `moa-local serve` process while its batch runs; started again, it finishes the batch."""
    engine = fake_engine(model="slow-model", latency_ms=100, tokens=3, template="{model} req {request}")
    port = free_port()
    config = fake_config({"slow": engine}, gateway={"data_dir": str(tmp_path / "data"), "port": port},
                         max_concurrency=2)  # fmt: skip
    config_path = tmp_path / "gateway.yaml"
    config_path.write_text(json.dumps(config.model_dump(mode="json")))  # JSON is YAML
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=10)
    count = 30
    with gateway_process(config_path, port, tmp_path / "gateway-1.log"):
        batch_id = start_batch(client, jsonl(*(request(f"k{i}", "slow", f"p{i}") for i in range(count))))

        def some_done() -> bool:
            counts = client.batches.retrieve(batch_id).request_counts
            return counts is not None and counts.completed >= 3

        wait_until(some_done, what="three lines answered")
    # Killed: lines in flight then (at most the endpoint's 2 slots) are run again; no finished one is.
    with gateway_process(config_path, port, tmp_path / "gateway-2.log"):
        batch = wait_batch(client, batch_id)
        assert batch.status == "completed" and batch.request_counts is not None
        assert (batch.request_counts.total, batch.request_counts.completed) == (count, count)
        output, errors = results(client, batch)
    assert errors == [] and custom_ids(output) == {f"k{i}": 1 for i in range(count)}
    assert count <= len(engine.chat_bodies()) <= count + 2


@contextlib.contextmanager
def gateway_process(config_path: Path, port: int, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`moa-local serve` in its own process, answering /health inside the block, SIGKILLed after it."""
    command = [sys.executable, "-m", "moa_local", "serve", "--config", str(config_path), "--log-level", "warning"]
    with log.open("wb") as sink:
        process = subprocess.Popen(
            command, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=sink, stderr=subprocess.STDOUT
        )

    def healthy() -> bool:
        assert process.poll() is None, f"the gateway exited: {log.read_text()}"
        try:
            return httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_until(healthy, what="the gateway answers /health")
        yield process
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)


def test_the_readme_batch_example_is_a_valid_input_for_configs_cpu_yaml(tmp_path: Path) -> None:
    block = re.search(r"```jsonl\n(.*?)```", (ROOT / "README.md").read_text(encoding="utf-8"), re.S)
    assert block is not None, "the README shows a jsonl example"
    path = tmp_path / "prompts.jsonl"
    path.write_text(block.group(1), encoding="utf-8")
    assert check_input(path) == 3
    items = list(read_input(path))
    models = load_config(ROOT / "configs" / "cpu.yaml").model_names()
    for item in items:
        assert isinstance(item, BatchItem), item
        assert item.body["model"] in models
        parse_chat_body(item.body, 1 << 20)  # the gateway would take it
