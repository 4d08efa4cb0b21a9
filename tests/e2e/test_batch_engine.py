"""A 10-line batch through the gateway over the real CPU vLLM engines, driven by the openai SDK.

Mixture and pass-through lines, one asking for the trace; every line must
come back answered by the engines, once. Timings are printed, never
asserted: run with `pytest -m engine -s` to see them.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.support.batch_inputs import jsonl, request, results, wait_batch
from tests.support.engine_fixtures import CpuStack
from tests.support.gateway_fixtures import GatewayServer

pytestmark = pytest.mark.engine

PROMPTS = (
    "Name three primary colors.", "What is 17 times 23?", "Say hello in French.", "Name a planet.",
    "What is the capital of Italy?", "Give one word that rhymes with cat.", "Name a fruit that is yellow.",
    "How many legs has a spider?", "Name an ocean.", "What colour is the sky on a clear day?",
)  # fmt: skip
MODELS = ("moa-cpu", "qwen", "smollm2", "moa-cpu", "self-moa-qwen", "qwen", "moa-cpu", "smollm2", "qwen", "moa-cpu")


@pytest.fixture
def gateway(cpu_stack: CpuStack, tmp_path: Path) -> Iterator[GatewayServer]:
    """The gateway over the engines, keeping its batches in tmp_path, no keys."""
    settings = {"data_dir": str(tmp_path / "data"), "api_keys_env": None}
    config = cpu_stack.config.model_copy(update={"gateway": cpu_stack.config.gateway.model_copy(update=settings)})
    server = GatewayServer(config)
    yield server
    server.stop()


def test_a_ten_line_batch_runs_on_the_cpu_engines(gateway: GatewayServer) -> None:
    client = openai.OpenAI(base_url=gateway.base_url, api_key="none", max_retries=0, timeout=120)
    pairs = enumerate(zip(MODELS, PROMPTS, strict=True))
    lines: list[dict[str, Any]] = [request(f"line-{i}", model, prompt, max_tokens=24) for i, (model, prompt) in pairs]
    lines[0]["body"]["moa"] = {"trace": True}
    started = time.perf_counter()
    uploaded = client.files.create(file=("ten.jsonl", jsonl(*lines)), purpose="batch")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    batch = wait_batch(client, batch.id, timeout_s=900, interval_s=1.0)  # the engines need the cores
    wall = time.perf_counter() - started
    assert batch.status == "completed", batch.errors
    assert batch.request_counts is not None
    assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (10, 10, 0)

    output, errors = results(client, batch)
    assert errors == []
    assert Counter(record["custom_id"] for record in output) == {f"line-{i}": 1 for i in range(10)}
    tokens = 0
    for record in output:
        line = lines[int(record["custom_id"].removeprefix("line-"))]
        body = record["response"]["body"]
        assert record["response"]["status_code"] == 200 and record["error"] is None
        assert body["object"] == "chat.completion" and body["model"] == line["body"]["model"]
        assert body["choices"][0]["message"]["content"].strip(), record["custom_id"]
        assert body["usage"]["completion_tokens"] > 0
        tokens += body["usage"]["completion_tokens"]
        assert ("moa" in body) == (record["custom_id"] == "line-0")
    traced = next(record for record in output if record["custom_id"] == "line-0")["response"]["body"]["moa"]
    agents = [*traced["layers"][0]["agents"], traced["aggregator"]]
    assert [agent["status"] for agent in agents] == ["ok", "ok", "ok"]
    assert gateway.metric("moa_batch_requests_total", outcome="ok") == 10
    assert gateway.metric("moa_batches", status="completed") == 1
    print(f"\n10-line batch on the CPU engines: {wall:.1f} s wall, {tokens} completion tokens "
          f"({tokens / wall:.1f} tokens/s, every call of every line)")  # fmt: skip
