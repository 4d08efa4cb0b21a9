"""The batch benchmark's scripts (`bench/batch_*.py`) on synthetic inputs: input lines, the token sum of an
output file, the gauges read from the gateway, and how the two targets are judged."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from moa_local.jobs.format import BatchItem, LineFailure, error_record, ok_record, parse_line
from moa_local.metrics import Metrics

BENCH = Path(__file__).resolve().parents[2] / "bench"


def script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # a dataclass looks its module up while being defined
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return module


@pytest.fixture(scope="module")
def batch_input() -> ModuleType:
    return script("batch_input")


@pytest.fixture(scope="module")
def batch_cli() -> ModuleType:
    return script("batch_cli")


@pytest.fixture(scope="module")
def batch_ttft() -> ModuleType:
    return script("batch_ttft")


@pytest.fixture(scope="module")
def batch_summary() -> ModuleType:
    return script("batch_summary")


def test_input_lines_take_the_prompts_in_turn_as_the_bench_does(batch_input: ModuleType) -> None:
    conversations = [[{"role": "user", "content": f"q{i}"}] for i in range(3)]
    lines = batch_input.batch_lines(conversations, "mix", 5, 48)
    assert [line["custom_id"] for line in lines] == [f"prompt-{i}" for i in range(5)]
    assert [line["body"]["messages"][0]["content"] for line in lines] == ["q0", "q1", "q2", "q0", "q1"]
    assert lines[4]["body"] == {"model": "mix", "messages": conversations[1], "max_tokens": 48}
    seen: dict[str, int] = {}
    parsed = [parse_line(n, json.dumps(line).encode(), seen) for n, line in enumerate(lines, start=1)]
    assert all(isinstance(item, BatchItem) for item in parsed)  # the batch format's own parser takes every line


def answer(custom_id: str, completion_tokens: int) -> str:
    body = {"object": "chat.completion", "usage": {"prompt_tokens": 100, "completion_tokens": completion_tokens}}
    return json.dumps(ok_record(custom_id, "req-1", body))


def test_generated_tokens_are_the_answers_usage_summed(batch_cli: ModuleType) -> None:
    assert batch_cli.usage_tokens([answer("a", 30), "\n", answer("b", 45)]) == (2, 75)
    assert batch_cli.usage_tokens([]) == (0, 0)


def test_an_error_record_in_the_output_file_is_refused_with_its_line(batch_cli: ModuleType) -> None:
    failure = LineFailure(3, "c", "server_error", "line 3: the engine failed")
    with pytest.raises(ValueError, match=r"^line 2: not an answer"):
        batch_cli.usage_tokens([answer("a", 30), json.dumps(error_record(failure))])


def test_gateway_gauges_are_read_per_endpoint_from_its_metrics(batch_ttft: ModuleType) -> None:
    metrics = Metrics()
    metrics.enable_batches()
    for endpoint, (queued, batch, inflight) in {"qwen": (5, 3, 13), "smollm2": (0, 0, 2)}.items():
        metrics.queued.labels(endpoint).set(queued)
        metrics.batch_queued.labels(endpoint).set(batch)
        metrics.inflight.labels(endpoint).set(inflight)
    text = metrics.render()[0].decode()
    assert batch_ttft.gateway_gauges(text) == {
        "qwen": {"queued": 5.0, "batch_queued": 3.0, "inflight": 13.0},
        "smollm2": {"queued": 0.0, "batch_queued": 0.0, "inflight": 2.0},
    }


def sample(qwen: tuple[float, float], engine: tuple[float, float]) -> dict[str, Any]:
    """The gateway's qwen (queued, batch_queued) and the qwen engine's (running, waiting)."""
    return {"gateway": {"qwen": {"queued": qwen[0], "batch_queued": qwen[1], "inflight": 9.0}},
            "engines": {"qwen": {"running": engine[0], "waiting": engine[1]}}}  # fmt: skip


def test_gauge_summary_splits_our_queue_into_interactive_and_batch_calls(batch_ttft: ModuleType) -> None:
    summary = batch_ttft.gauge_summary([sample((5, 3), (8, 1)), sample((3, 3), (6, 0))])
    assert summary["samples"] == 2
    assert summary["endpoints"]["qwen"]["interactive_waiting"] == {"mean": 1.0, "peak": 2.0}
    assert summary["endpoints"]["qwen"]["batch_waiting"] == {"mean": 3.0, "peak": 3.0}
    assert summary["engines"]["qwen"] == {"running": {"mean": 7.0, "peak": 8.0}, "waiting": {"mean": 0.5, "peak": 1.0}}
    # Little's law: 1.0 interactive calls waiting on mean over 100 s, 40 calls arrived: 2.5 s each.
    assert batch_ttft.admission_wait_s(summary, calls=40, wall_s=100.0) == pytest.approx(2.5)
    assert batch_ttft.admission_wait_s(batch_ttft.gauge_summary([]), calls=40, wall_s=100.0) is None


def direct(wall_s: float, rate: float, errors: int = 0) -> dict[str, Any]:
    return {"prompts": 96, "wall_s": wall_s, "generated_tokens_per_s": rate, "errors": errors}


def cli(wall_s: float, rate: float) -> dict[str, Any]:
    return {"prompts": 96, "wall_s": wall_s, "generated_tokens_per_s": rate, "errors": 0,
            "engine_generated_tokens_per_s": rate}  # fmt: skip


@pytest.mark.parametrize(("rate", "share", "status"), [(38.4, "96%", "met"), (37.6, "94%", "missed")])
def test_throughput_is_judged_against_the_direct_batch(
    batch_summary: ModuleType, rate: float, share: str, status: str
) -> None:
    row = batch_summary.throughput_row([direct(400.0, 40.0)], [cli(417.0, rate)])
    assert row == {
        "target": "moa-local batch >= 95% of the direct batch (96 prompts)",
        "measured": f"{share} ({rate:.1f} of 40.0 generated tok/s; 400 s direct, 417 s moa-local batch)",
        "status": status,
    }


def test_throughput_of_several_runs_is_the_mean_of_each_side(batch_summary: ModuleType) -> None:
    row = batch_summary.throughput_row([direct(400.0, 40.0), direct(440.0, 36.0, errors=1)],
                                       [cli(410.0, 39.0), cli(420.0, 37.0)])  # fmt: skip
    assert row["measured"] == ("100% (38.0 of 38.0 generated tok/s; 2 runs 400-440 s direct, 2 runs 410-420 s "
                               "moa-local batch; 1 failed calls or lines)")  # fmt: skip
    assert row["status"] == "met"
    unknown = batch_summary.throughput_row([], [cli(410.0, 39.0)])
    assert unknown["status"] == "n/a" and unknown["measured"] == "unknown: no direct batch measured"


def ttft_result(idle: float, loaded: float, *, lasted: bool = True) -> dict[str, Any]:
    def run(ttft: float) -> dict[str, Any]:
        return {"ttft_p50_s": ttft, "ttft_p95_s": ttft, "e2e_p50_s": ttft * 2, "gateway_ttft_part_p50_s": 0.005,
                "errors": 0, "wall_s": 100.0}  # fmt: skip

    state = {"status": "in_progress", "counts": {"completed": 10, "failed": 0, "total": 96}}
    under = run(loaded) | {"gauges": batch_summary_gauges(), "admission_wait_per_call_s": 0.02}
    return {
        "model": "moa-bench", "idle": run(idle), "loaded": under, "ttft_ratio": loaded / idle,
        "batch": {"id": "batch_1", "lines": 96, "models": ["mix"], "loaded": True, "lasted": lasted,
                  "loaded_after_s": 30.0, "before": state, "after": state, "end": state | {"status": "cancelled"}},
    }  # fmt: skip


def batch_summary_gauges() -> dict[str, Any]:
    spread = {"mean": 0.25, "peak": 1.0}
    endpoints = {"qwen": {"interactive_waiting": spread, "batch_waiting": {"mean": 20.0, "peak": 24.0}}}
    return {"samples": 60, "endpoints": endpoints,
            "engines": {"qwen": {"running": {"mean": 8.5, "peak": 10.0}, "waiting": spread}}}  # fmt: skip


@pytest.mark.parametrize(("loaded", "status"), [(12.0, "met"), (16.0, "missed")])
def test_ttft_under_a_batch_is_judged_against_idle(batch_summary: ModuleType, loaded: float, status: str) -> None:
    row = batch_summary.ttft_row(ttft_result(10.0, loaded))
    assert row["target"] == "interactive TTFT p50 under a batch <= 1.5x idle (moa-bench, c=1)"
    assert row["status"] == status
    assert row["measured"] == (
        f"{loaded / 10:.2f}x (10.00 s idle -> {loaded:.2f} s under a 96-line batch of mix; our queue: interactive "
        "calls waiting 0.25 on mean (peak 1), about 20 ms per call, batch calls 20.0; qwen ran 8.5 requests on "
        "mean, 0.2 waiting (peak 1))"
    )


def test_ttft_is_not_judged_when_the_batch_ended_first(batch_summary: ModuleType) -> None:
    row = batch_summary.ttft_row(ttft_result(10.0, 10.0, lasted=False))
    assert row["status"] == "n/a"
    assert row["measured"].startswith("not judged: the batch ended before the interactive run did; 1.00x")


def test_summary_files_and_the_targets_table_carry_both_rows(batch_summary: ModuleType, tmp_path: Path) -> None:
    folder = tmp_path / "batch"
    (folder / "ttft").mkdir(parents=True)
    (folder / "direct-1.json").write_text(json.dumps({"direct_batch": direct(400.0, 40.0)}))
    (folder / "cli-2.json").write_text(json.dumps(cli(410.0, 39.0)))
    (folder / "ttft" / "ttft.json").write_text(json.dumps(ttft_result(10.0, 12.0)))
    assert batch_summary.main([str(folder)]) == 0
    rows = json.loads((folder / "summary.json").read_text())["targets"]
    assert [r["status"] for r in rows] == ["met", "met"]
    markdown = (folder / "summary.md").read_text()
    assert all(f"| {r['target']} | {r['measured']} | {r['status']} |" in markdown for r in rows)
    assert "| 1: direct batch | 400 | 40.0 | 40.0 | 0 |\n| 2: moa-local batch | 410 | 39.0 | 39.0 | 0 |" in markdown
    assert script("targets").batch_job_rows(tmp_path) == rows  # bench/targets.py prints them with the others
