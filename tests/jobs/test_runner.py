"""The batch runner with plain functions as executors: bounds, resume, cancellation, progress, counts."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from moa_local.jobs.format import BatchItem, LineFailure
from moa_local.jobs.result_file import ResultFile
from moa_local.jobs.runner import BatchRunner, Progress
from moa_local.metrics import Metrics


def items(n: int, start: int = 1) -> list[BatchItem | LineFailure]:
    return [BatchItem(i, f"r{i}", {"model": "m", "prompt": f"r{i}"}) for i in range(start, start + n)]


def answer(body: dict[str, Any], completion_tokens: int = 3) -> dict[str, Any]:
    usage = {"prompt_tokens": 2, "completion_tokens": completion_tokens, "total_tokens": 2 + completion_tokens}
    return {"object": "chat.completion", "echo": body["prompt"], "usage": usage}


def read(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    data = path.read_bytes()
    assert not data or data.endswith(b"\n"), "a partial last line"
    return [json.loads(raw) for raw in data.splitlines()]


async def until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.001)


def runner(tmp_path: Path, execute: Any, **options: Any) -> BatchRunner:
    return BatchRunner(execute, ResultFile(tmp_path / "out.jsonl"), ResultFile(tmp_path / "err.jsonl"), **options)


async def test_no_more_than_max_inflight_run_at_once_and_each_line_is_written_once(tmp_path: Path) -> None:
    running, peak = 0, 0

    async def execute(body: dict[str, Any], request_id: str) -> tuple[int, dict[str, Any]]:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        for _ in range(3):
            await asyncio.sleep(0)
        running -= 1
        return 200, answer(body)

    progress = await runner(tmp_path, execute, max_inflight=3).run(items(10), total=10)
    assert peak == 3
    out = read(tmp_path / "out.jsonl")
    assert sorted(r["custom_id"] for r in out) == sorted(f"r{i}" for i in range(1, 11))
    assert all(r["response"]["body"]["echo"] == r["custom_id"] for r in out)
    assert len({r["response"]["request_id"] for r in out}) == 10
    assert (progress.ok, progress.errors, progress.remaining, progress.completion_tokens) == (10, 0, 0, 30)
    assert not (tmp_path / "err.jsonl").exists()


async def test_error_answers_and_bad_lines_go_to_the_error_file_and_the_job_goes_on(tmp_path: Path) -> None:
    async def execute(body: dict[str, Any], request_id: str) -> tuple[int, dict[str, Any]]:
        if body["prompt"] == "r2":
            return 503, {"error": {"message": "mix: layer 1 got 0 of the 1 answers it needs", "type": "x",
                                   "param": None, "code": "quorum_not_reached"}}  # fmt: skip
        if body["prompt"] == "r3":
            raise RuntimeError("a bug")
        return 200, answer(body)

    metrics = Metrics(CollectorRegistry())
    lines = [*items(3), LineFailure(4, None, "invalid_json", "line 4: not valid JSON")]
    progress = await runner(tmp_path, execute, metrics=metrics).run(lines)
    assert [r["custom_id"] for r in read(tmp_path / "out.jsonl")] == ["r1"]
    errors = {r["custom_id"]: r for r in read(tmp_path / "err.jsonl")}
    assert errors["r2"]["error"] == {"code": "quorum_not_reached",
                                     "message": "line 2: mix: layer 1 got 0 of the 1 answers it needs"}  # fmt: skip
    assert errors["r2"]["response"]["status_code"] == 503
    assert errors["r3"]["error"] == {"code": "internal_error",
                                     "message": "line 3: internal error in moa-local (RuntimeError); see the log"}
    assert errors[None]["response"] is None and errors[None]["error"]["message"] == "line 4: not valid JSON"
    assert (progress.ok, progress.failed, progress.invalid) == (1, 2, 1)
    counts = {o: metrics.registry.get_sample_value("moa_batch_requests_total", {"outcome": o}) for o in
              ("ok", "error", "rejected")}  # fmt: skip
    assert counts == {"ok": 1, "error": 2, "rejected": 1}


async def test_a_rerun_skips_every_line_already_in_either_file(tmp_path: Path) -> None:
    calls: list[str] = []

    async def execute(body: dict[str, Any], request_id: str) -> tuple[int, dict[str, Any]]:
        calls.append(body["prompt"])
        return 200, answer(body)

    (tmp_path / "out.jsonl").write_text(json.dumps({"custom_id": "r1", "error": None}) + "\n" +
                                        json.dumps({"custom_id": "r3", "error": None}) + "\n")  # fmt: skip
    failed = {"custom_id": "r4", "error": {"code": "backend_failed", "message": "line 4: down"}}
    bad = {"custom_id": None, "error": {"code": "invalid_json", "message": "line 6: not valid JSON"}}
    (tmp_path / "err.jsonl").write_text(json.dumps(failed) + "\n" + json.dumps(bad) + "\n")
    lines = [*items(5), LineFailure(6, None, "invalid_json", "line 6: not valid JSON"),
             LineFailure(7, None, "invalid_json", "line 7: not valid JSON")]  # fmt: skip
    progress = await runner(tmp_path, execute).run(lines, total=7)
    assert sorted(calls) == ["r2", "r5"]
    out = [r["custom_id"] for r in read(tmp_path / "out.jsonl")]
    assert out[:2] == ["r1", "r3"] and sorted(out[2:]) == ["r2", "r5"]
    assert [r["error"]["message"] for r in read(tmp_path / "err.jsonl")][2:] == ["line 7: not valid JSON"]
    assert (progress.already, progress.ok, progress.invalid, progress.remaining) == (4, 2, 1, 0)


async def test_cancelling_a_run_cancels_the_requests_in_flight_and_leaves_complete_lines(tmp_path: Path) -> None:
    cancelled: list[str] = []
    forever = asyncio.Event()

    async def execute(body: dict[str, Any], request_id: str) -> tuple[int, dict[str, Any]]:
        if body["prompt"] in ("r1", "r2"):
            return 200, answer(body)
        try:
            await forever.wait()
        except asyncio.CancelledError:
            cancelled.append(body["prompt"])
            raise
        raise AssertionError("never released")

    job = runner(tmp_path, execute, max_inflight=4)
    task = asyncio.create_task(job.run(items(8), total=8))
    await until(lambda: job.progress().ok == 2 and job.progress().inflight == 4)
    task.cancel()
    await asyncio.wait([task])
    assert task.cancelled()
    assert sorted(cancelled) == ["r3", "r4", "r5", "r6"]  # in flight: cancelled; r7 and r8 never started
    assert [r["custom_id"] for r in read(tmp_path / "out.jsonl")] == ["r1", "r2"]
    progress = job.progress()
    assert (progress.ok, progress.inflight, progress.remaining) == (2, 0, 6)

    async def finish(body: dict[str, Any], request_id: str) -> tuple[int, dict[str, Any]]:
        return 200, answer(body)

    await runner(tmp_path, finish).run(items(8), total=8)
    assert sorted(r["custom_id"] for r in read(tmp_path / "out.jsonl")) == sorted(f"r{i}" for i in range(1, 9))


async def test_progress_is_reported_while_running_with_rates_tokens_and_engine_time(tmp_path: Path) -> None:
    seen: list[Progress] = []
    reported = asyncio.Event()

    def on_progress(progress: Progress) -> None:
        seen.append(progress)
        reported.set()

    async def execute(body: dict[str, Any], request_id: str) -> tuple[int, dict[str, Any]]:
        if body["prompt"] == "r2":
            await reported.wait()  # held until a progress report went out, with r1 done
        trace = {"layers": [{"agents": [{"endpoint": "a", "status": "ok", "latency_s": 1.5},
                                        {"endpoint": "b", "status": "skipped", "latency_s": 0.0}]}],
                 "aggregator": {"endpoint": "agg", "status": "ok", "latency_s": 0.5}}  # fmt: skip
        return 200, {**answer(body, completion_tokens=10), "moa": trace}

    job = runner(tmp_path, execute, max_inflight=1, on_progress=on_progress, progress_every_s=0.01)
    job.add_trace({"layers": [], "aggregator": {"endpoint": "agg", "status": "ok", "latency_s": 1.0}})
    final = await job.run(items(2), total=5)
    first = seen[0]
    assert (first.total, first.ok, first.inflight, first.completion_tokens) == (5, 1, 1, 10)
    assert first.remaining == 4 and first.lines_per_s > 0 and first.eta_s is not None
    assert first.eta_s == first.remaining / first.lines_per_s
    assert (final.ok, final.completion_tokens, final.remaining) == (2, 20, 3)
    assert final.engine_s == {"a": 3.0, "agg": 2.0}  # skipped calls took no engine time
    assert final.tokens_per_s == 20 / final.elapsed_s
