"""`moa-local batch` against fake engines: crash and Ctrl-C mid-run then resume, failing backends, refused inputs.

The kill and Ctrl-C tests run the console command as its own process (a
signal to it is the point); the others go through click's runner in this
process. Lines for endpoint "h" go to a fake that hangs until its client
leaves, so a run stops making progress at a known point: every line
before them answered, four of them in flight. No test waits on a clock.
"""

from __future__ import annotations

import json
import os
import pty
import re
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.cli.test_cli import COMMAND, invoke, one_error_line, write_config

if TYPE_CHECKING:
    from tests.support.fake_fixtures import FakeEngineFactory, FakeServer

STEADY = {"timeout_s": 60, "max_retries": 0, "circuit": {"failures": 1000}}


def write_input(path: Path, models: list[str]) -> list[str]:
    """Line i+1 asks `models[i]` (custom_id "r<i+1>"); the custom_ids, in order."""
    ids = [f"r{i}" for i in range(1, len(models) + 1)]
    lines = [
        json.dumps({"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
                    "body": {"model": model, "messages": [{"role": "user", "content": f"question {custom_id}"}]}})
        for custom_id, model in zip(ids, models, strict=True)
    ]  # fmt: skip
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return ids


def records(path: Path) -> list[dict[str, Any]]:
    """Every line of a result file, each checked to be complete."""
    if not path.exists():
        return []
    data = path.read_bytes()
    assert not data or data.endswith(b"\n"), f"{path} ends in a partial line"
    return [json.loads(line) for line in data.splitlines()]


def line_count(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def wait_until(check: Callable[[], bool], what: str, process: subprocess.Popen[str] | None = None) -> None:
    deadline = time.monotonic() + 60  # bounded; a process start alone takes seconds on a small machine
    while not check():
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the command exited early ({process.returncode}): {process.communicate()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def start(*args: str | Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*COMMAND, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "NO_COLOR": "1", "COLUMNS": "100"},
    )  # fmt: skip


def stalled_run(tmp_path: Path, fake_engine: FakeEngineFactory) -> tuple[list[str], Any, FakeServer, FakeServer]:
    """40 lines answered by "a" (pass-through and mixture), then 20 for "h", which hangs."""
    a, h = fake_engine(model="a"), fake_engine(model="h", hang=True)
    config = write_config(tmp_path, {"a": a, "h": h}, [["a"]], aggregator="a", endpoint_settings=STEADY)
    ids = write_input(tmp_path / "in.jsonl", ["a", "moa"] * 20 + ["h"] * 20)
    args = ("batch", "--config", config, tmp_path / "in.jsonl", "-o", tmp_path / "out.jsonl", "--max-inflight", "4")
    return ids, args, a, h


def test_fault_batch_killed_mid_run_resumes_each_custom_id_once_and_redoes_a_torn_line(
    tmp_path: Path, fake_engine: FakeEngineFactory
) -> None:
    ids, args, a, h = stalled_run(tmp_path, fake_engine)
    out, errors = tmp_path / "out.jsonl", tmp_path / "out.errors.jsonl"
    process = start(*args)
    wait_until(lambda: line_count(out) == 40 and len(h.chat_bodies()) == 4, "40 answers, 4 hung", process)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=30)
    assert sorted(r["custom_id"] for r in records(out)) == sorted(ids[:40])
    with out.open("ab") as handle:  # a crash in the middle of writing the next answer
        handle.write(b'{"id": "batch_req_torn", "custom_id": "r41", "response": {"status_code": 2')
    calls_to_a = len(a.chat_bodies())

    h.set(hang=False)
    result = invoke(*args)
    assert result.returncode == 0, (result.stdout, result.stderr)
    answered = [r["custom_id"] for r in records(out)] + [r["custom_id"] for r in records(errors)]
    assert sorted(answered) == sorted(ids) and len(answered) == len(ids)  # each exactly once
    assert records(errors) == [] and len(a.chat_bodies()) == calls_to_a  # nothing finished was redone
    assert "torn last line" in result.stdout and "40 done by an earlier run" in result.stdout


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["ctrl-c", "sigterm"])
def test_fault_batch_interrupted_cancels_upstream_leaves_complete_lines_and_says_how_to_resume(
    tmp_path: Path, fake_engine: FakeEngineFactory, signum: signal.Signals, code: int
) -> None:
    ids, args, _, h = stalled_run(tmp_path, fake_engine)
    out = tmp_path / "out.jsonl"
    process = start(*args)
    wait_until(lambda: line_count(out) == 40 and len(h.chat_bodies()) == 4, "40 answers, 4 hung", process)
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=30)
    assert process.returncode == code, (stdout, stderr)
    assert "Traceback" not in stderr
    resume = f"moa-local batch --config {tmp_path / 'moa.yaml'} {tmp_path / 'in.jsonl'} -o {out} --max-inflight 4"
    assert stdout.splitlines()[-1] == f"interrupted: the files hold complete lines only; resume with: {resume}"
    assert sorted(r["custom_id"] for r in records(out)) == sorted(ids[:40])
    assert not (tmp_path / "out.errors.jsonl").exists()  # the cancelled requests are not failures
    wait_until(lambda: sum(e.kind == "disconnect" for e in h.events) == 4, "the 4 upstream calls closed")

    h.set(hang=False)
    result = invoke(*args)
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert sorted(r["custom_id"] for r in records(out)) == sorted(ids)


def test_fault_batch_with_a_backend_failing_half_the_calls_completes_with_the_failures_in_the_error_file(
    tmp_path: Path, fake_engine: FakeEngineFactory
) -> None:
    a = fake_engine(model="a", status=500, error_message="CUDA out of memory", times=50)  # the first 50 calls
    config = write_config(tmp_path, {"a": a}, [["a"]], aggregator="a", endpoint_settings=STEADY)
    ids = write_input(tmp_path / "in.jsonl", ["a"] * 100)
    out, errors = tmp_path / "out.jsonl", tmp_path / "errors.jsonl"
    result = invoke("batch", "--config", config, tmp_path / "in.jsonl", "-o", out, "--errors", errors)
    assert result.returncode == 0, (result.stdout, result.stderr)
    answered, failed = records(out), records(errors)
    assert (len(answered), len(failed)) == (50, 50)
    assert sorted(r["custom_id"] for r in answered + failed) == sorted(ids)
    for record in failed:
        line_no = ids.index(record["custom_id"]) + 1
        assert record["error"] == {"code": "backend_failed",
                                   "message": f"line {line_no}: a: engine answered 500: CUDA out of memory"}
        assert record["response"]["status_code"] == 502
        assert record["response"]["body"]["error"]["message"] == "a: engine answered 500: CUDA out of memory"
    assert f"50 answered -> {out}, 50 failed + 0 invalid -> {errors}" in result.stdout


def test_fault_batch_prints_a_progress_line_and_the_summary_when_not_on_a_terminal(
    tmp_path: Path, fake_engine: FakeEngineFactory
) -> None:
    a, b = fake_engine(model="a"), fake_engine(model="b")
    config = write_config(tmp_path, {"a": a, "b": b}, [["a", "b"]], aggregator="b", endpoint_settings=STEADY)
    write_input(tmp_path / "in.jsonl", ["moa"] * 6)
    result = invoke("batch", "--config", config, tmp_path / "in.jsonl", "-o", tmp_path / "out.jsonl")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("batch: 6/6 lines, 0 errors, ") and lines[0].endswith(" tokens/s, ETA 0:00:00")
    assert lines[1].startswith("6 lines in ") and lines[1].endswith(f"6 answered -> {tmp_path / 'out.jsonl'}, "
                                                                     f"0 failed + 0 invalid -> "
                                                                     f"{tmp_path / 'out.errors.jsonl'}")  # fmt: skip
    usage = [r["response"]["body"]["usage"] for r in records(tmp_path / "out.jsonl")]
    prompt, completion = (sum(u[k] for u in usage) for k in ("prompt_tokens", "completion_tokens"))
    assert lines[2].startswith(f"tokens: {prompt} prompt + {completion} completion (")
    assert lines[3].startswith("engine time: a ") and ", b " in lines[3]  # both endpoints' share of engine time
    assert len(lines) == 4


def test_batch_refuses_an_input_that_is_not_jsonl_with_one_line_and_no_output(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"a": "http://127.0.0.1:9/v1"}, [["a"]], aggregator="a")
    source, out = tmp_path / "prompts.csv", tmp_path / "out.jsonl"
    source.write_text("id,prompt\n1,hello\n", encoding="utf-8")
    line = one_error_line(invoke("batch", "--config", config, source, "-o", out))
    assert line == (f'{source}: not a JSONL batch file: line 1 is not a JSON object (expected one '
                    '{"custom_id", "method", "url", "body"} object per line)')  # fmt: skip
    source.write_text("\n\n", encoding="utf-8")
    line = one_error_line(invoke("batch", "--config", config, source, "-o", out))
    assert line == f"{source}: empty: a batch input needs one JSON request per line"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["moa.yaml", "prompts.csv"]


def test_batch_refuses_an_output_that_is_the_input(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"a": "http://127.0.0.1:9/v1"}, [["a"]], aggregator="a")
    source = tmp_path / "in.jsonl"
    write_input(source, ["a"])
    line = one_error_line(invoke("batch", "--config", config, source, "-o", source))
    assert line == "the input, output and errors files must be three different files"


def test_fault_batch_on_a_terminal_shows_a_progress_bar(tmp_path: Path, fake_engine: FakeEngineFactory) -> None:
    a = fake_engine(model="a")
    config = write_config(tmp_path, {"a": a}, [["a"]], aggregator="a", endpoint_settings=STEADY)
    write_input(tmp_path / "in.jsonl", ["a"] * 5)
    main, terminal = pty.openpty()
    with os.fdopen(main, "rb", buffering=0) as screen:
        process = subprocess.Popen(
            [*COMMAND, "batch", "--config", str(config), str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "o.jsonl")],
            stdout=terminal, stderr=subprocess.PIPE, env={**os.environ, "COLUMNS": "150", "TERM": "xterm"},
        )  # fmt: skip
        os.close(terminal)
        shown = b""
        while True:
            try:
                chunk = screen.read(4096)
            except OSError:  # the terminal closed: the command has exited
                break
            if not chunk:
                break
            shown += chunk
        assert process.wait(timeout=60) == 0
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", shown.decode(errors="replace"))
    assert re.search(r"batch\s.*\s5/5\s+0 errors\s+[\d.]+ lines/s, \d+ tokens/s\s+ETA", text), text
    assert "5 answered -> " in text
