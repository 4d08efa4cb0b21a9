"""The run folder's lock: exclusive, naming its holder, released with its holder, not inherited."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from moa_local.deploy.run_lock import lock_path, run_lock
from moa_local.errors import ServingError


def test_second_holder_fails_at_once_naming_the_first(tmp_path: Path) -> None:
    with run_lock(tmp_path / "run", "up"):
        message = f"{tmp_path / 'run'}: another moa-local command is using this run folder (pid {os.getpid()}, `up`)"
        with pytest.raises(ServingError, match=re.escape(message)), run_lock(tmp_path / "run", "down"):
            pass
    with run_lock(tmp_path / "run", "down"):  # released
        assert lock_path(tmp_path / "run").read_text() == f"{os.getpid()} down\n"


def test_lock_held_by_another_process_is_released_when_it_dies(tmp_path: Path) -> None:
    code = (
        "import sys; from pathlib import Path; from moa_local.deploy.run_lock import run_lock\n"
        "with run_lock(Path(sys.argv[1]), 'up'):\n    print('held', flush=True); sys.stdin.read()\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        with pytest.raises(ServingError, match=rf"\(pid {holder.pid}, `up`\)"), run_lock(tmp_path, "up"):
            pass
    finally:
        holder.kill()
        holder.wait()
    with run_lock(tmp_path, "up"):  # the kernel dropped the dead holder's lock
        pass


def test_unusable_run_folder_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    unusable = tmp_path / "file" / "run"
    with (
        pytest.raises(ServingError, match=rf"^{unusable}: cannot use this run folder \(Not a"),
        run_lock(unusable, "up"),
    ):
        pass
