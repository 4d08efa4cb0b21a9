"""The launcher under faults, with a fake engine (tests/deploy/fake_vllm.py) in place of vLLM.

`moa-local up` interrupted by SIGINT or SIGTERM while its engine starts, a
second Ctrl-C during that clean-up, two commands on one run folder at once,
a lost state file, and an engine TMPDIR someone else planted.
"""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from moa_local.cli import main
from moa_local.config import parse_config
from moa_local.deploy import launcher, processes
from moa_local.deploy.launch_spec import private_tmp
from moa_local.deploy.run_state import read_state, state_path
from moa_local.errors import ServingError
from tests.deploy.fake_vllm import FakeVllm, engines_of, kill_engines_of, wait_for_line, wait_for_record
from tests.support.engine_fixtures import free_port


@pytest.fixture
def fake_vllm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeVllm]:
    fake = FakeVllm.install(tmp_path / "fake")
    for name, value in fake.env.items():
        monkeypatch.setenv(name, value)  # for the launcher running in this process
    yield fake


@pytest.fixture
def run_dir(tmp_path: Path) -> Iterator[Path]:
    folder = tmp_path / "run"
    yield folder
    kill_engines_of(folder)  # only what a failed test left behind


def write_config(tmp_path: Path, fake: FakeVllm, *args: str) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(fake.config_text(free_port(), *args))
    return path


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_fault_signal_during_start_stops_the_engine_it_started(
    tmp_path: Path, fake_vllm: FakeVllm, run_dir: Path, sig: signal.Signals
) -> None:
    config = write_config(tmp_path, fake_vllm, "--fake-never-ready")
    up = fake_vllm.cli("up", "--config", str(config), "--run-dir", str(run_dir), "--timeout", "600")
    record = wait_for_record(run_dir, "small", up)
    wait_for_line(record.log, "fake engine: started")
    up.send_signal(sig)
    _, err = up.communicate(timeout=120)
    assert up.returncode == 1, err
    assert f"Error: interrupted ({sig.name}); the servers started by this command were stopped" in err
    assert "Traceback" not in err
    assert not processes.is_alive(record.pid) and processes.group_members(record.pid) == []
    assert engines_of(run_dir) == []
    assert read_state(run_dir) == {}


def test_fault_second_ctrl_c_during_the_clean_up_still_stops_everything(
    tmp_path: Path, fake_vllm: FakeVllm, run_dir: Path
) -> None:
    """The fake ignores SIGTERM: the clean-up's grace period is running when the second Ctrl-C comes."""
    config = write_config(tmp_path, fake_vllm, "--fake-never-ready", "--fake-ignore-sigterm")
    up = fake_vllm.cli("up", "--config", str(config), "--run-dir", str(run_dir), "--timeout", "600")
    record = wait_for_record(run_dir, "small", up)
    wait_for_line(record.log, "fake engine: started")
    up.send_signal(signal.SIGINT)
    wait_for_line(record.log, "fake engine: ignoring SIGTERM")
    up.send_signal(signal.SIGINT)
    _, err = up.communicate(timeout=120)
    assert up.returncode == 1, err
    assert "Error: interrupted (SIGINT); the servers started by this command were stopped" in err
    assert "Traceback" not in err
    assert engines_of(run_dir) == []
    assert read_state(run_dir) == {}


def test_fault_second_up_on_the_same_run_folder_fails_at_once(
    tmp_path: Path, fake_vllm: FakeVllm, run_dir: Path
) -> None:
    config = write_config(tmp_path, fake_vllm, "--fake-never-ready")
    first = fake_vllm.cli("up", "--config", str(config), "--run-dir", str(run_dir), "--timeout", "600")
    try:
        record = wait_for_record(run_dir, "small", first)
        before = state_path(run_dir).read_text()
        busy = (
            f"Error: {run_dir}: another moa-local command is using this run folder (pid {first.pid}, `up`); "
            "wait for it to finish or stop it, then try again"
        )
        for command in (["up", "--timeout", "1"], ["down"]):
            second = CliRunner().invoke(main, [*command, "--config", str(config), "--run-dir", str(run_dir)])
            assert (second.exit_code, second.output.strip().splitlines()) == (1, [busy])
        assert state_path(run_dir).read_text() == before
        assert [engine.pid for engine in engines_of(run_dir)] == [record.pid]
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=120)
    assert engines_of(run_dir) == []


def test_fault_lost_state_file_status_up_and_down_still_find_the_engine(
    tmp_path: Path, fake_vllm: FakeVllm, run_dir: Path
) -> None:
    config = parse_config(fake_vllm.config_text(free_port()), "cfg.yaml")
    (record,) = launcher.up(config, run_dir, timeout_s=60)
    blocked = (Path("/proc") / str(record.pid) / "status").read_text().split("SigBlk:")[1].split()[0]
    assert int(blocked, 16) == 0  # the engine does not inherit the signals `up` held back while spawning it

    state_path(run_dir).unlink()
    (row,) = launcher.status(config, run_dir)
    assert (row.state, row.pid) == ("up", record.pid)
    events: list[str] = []
    assert [r.pid for r in launcher.up(config, run_dir, timeout_s=60, on_event=events.append)] == [record.pid]
    assert f"small: already running (pid {record.pid})" in events
    assert read_state(run_dir)["small"].pid == record.pid  # recorded again

    state_path(run_dir).unlink()
    assert launcher.down(config, run_dir, grace_s=30) == {"small": "stopped"}
    assert not processes.is_alive(record.pid)
    assert [row.state for row in launcher.status(config, run_dir)] == ["down"]


def test_fault_engine_of_an_endpoint_removed_from_the_config_is_found_without_state(
    tmp_path: Path, fake_vllm: FakeVllm, run_dir: Path
) -> None:
    config = parse_config(fake_vllm.config_text(free_port()), "cfg.yaml")
    (record,) = launcher.up(config, run_dir, timeout_s=60)
    state_path(run_dir).unlink()
    other = parse_config(fake_vllm.config_text(free_port(), name="other"), "cfg.yaml")
    assert launcher.down(other, run_dir, grace_s=30) == {"other": "not running", "small": "stopped"}
    assert not processes.is_alive(record.pid)


def test_fault_engine_tmp_folder_planted_in_tmp_is_refused(tmp_path: Path, fake_vllm: FakeVllm) -> None:
    run_dir = tmp_path / ("long-run-folder-name-" * 3)  # TMPDIR would be too long: it goes to /tmp
    planted = private_tmp(run_dir, "small")
    assert planted.parent == Path("/tmp")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o777)
    planted.symlink_to(elsewhere)  # as another user could: /tmp is shared and the name predictable
    try:
        config = parse_config(fake_vllm.config_text(free_port()), "cfg.yaml")
        refused = f"{planted}: refusing this engine temporary folder: it is a symbolic link;"
        with pytest.raises(ServingError, match=re.escape(refused)):
            launcher.up(config, run_dir, timeout_s=60)
        assert read_state(run_dir) == {} and engines_of(run_dir) == []
    finally:
        planted.unlink()
        kill_engines_of(run_dir)


def test_engine_tmp_folder_in_tmp_is_private(tmp_path: Path, fake_vllm: FakeVllm) -> None:
    run_dir = tmp_path / ("long-run-folder-name-" * 3)
    config = parse_config(fake_vllm.config_text(free_port()), "cfg.yaml")
    try:
        launcher.up(config, run_dir, timeout_s=60)
        folder = private_tmp(run_dir, "small")
        info = folder.lstat()
        assert (info.st_uid, info.st_mode & 0o777) == (os.getuid(), 0o700)
    finally:
        launcher.down(config, run_dir)
    assert not folder.exists()
