"""lm-evaluation-harness against a mixture of the real CPU engines, through the gateway.

The harness as a user runs it (`tests/support/harness.py`): its own
process, `--model local-chat-completions`, a three-question task over a
local file, with the gateway's API key. What is asserted is that every
question went through the mixture and came back scored; the score itself
is printed, never asserted (two tiny models: run with `pytest -m engine -s`
to see it).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.engine_fixtures import CpuStack
from tests.support.gateway_fixtures import GatewayServer, keyed_gateway
from tests.support.harness import run_harness

pytestmark = pytest.mark.engine

KEY = "harness-test-key"
ROWS = [
    {"question": "What is 2 + 3? Reply with the number only.", "answer": "5"},
    {"question": "What is the capital of France? Reply with one word.", "answer": "Paris"},
    {"question": "What colour is a clear daytime sky? Reply with one word.", "answer": "Blue"},
]


@pytest.fixture(scope="module")
def gateway(cpu_stack: CpuStack) -> Iterator[GatewayServer]:
    server = keyed_gateway(cpu_stack.config, KEY)
    yield server
    server.stop()


def test_lm_eval_harness_scores_a_task_against_a_mixture_of_the_cpu_engines(
    gateway: GatewayServer, tmp_path: Path
) -> None:
    results, samples = run_harness(tmp_path, gateway.base_url, "moa-cpu", ROWS, api_key=KEY, max_tokens=16,
                                   concurrent=3)  # fmt: skip
    assert sorted(s["target"] for s in samples) == sorted(row["answer"] for row in ROWS)
    assert all(s["resps"][0][0].strip() for s in samples), samples  # a real answer for each question
    assert 0.0 <= results["exact_match,none"] <= 1.0
    gateway.wait_for(lambda: gateway.metric("moa_requests_total", mixture="moa-cpu", outcome="ok") == 3,
                     timeout_s=30, what="the gateway's count of the harness's three mixture answers")  # fmt: skip
    print(f"\nlm-eval exact match on moa-cpu: {results['exact_match,none']:.2f}; answers: "
          f"{[s['resps'][0][0] for s in samples]}")  # fmt: skip
