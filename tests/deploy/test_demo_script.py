"""serving/demo.sh stops the engines on Ctrl-C and SIGTERM, after `up` has stopped what it started.

A stand-in `.venv/bin/moa-local` records each command; its `up` waits until
it gets SIGINT or SIGTERM, then records that it stopped.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

DEMO = Path(__file__).resolve().parents[2] / "serving" / "demo.sh"

FAKE_MOA = """\
#!/bin/sh
echo "$1" >> calls.log
if [ "$1" = up ]; then
  trap 'kill $pause; echo up-stopped >> calls.log; exit 1' INT TERM
  sleep 600 & pause=$!
  echo started > up.started
  wait $pause
fi
"""


@pytest.mark.parametrize("to_group", [True, False], ids=["terminal", "script-only"])
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_fault_signal_during_up_stops_up_then_runs_down(tmp_path: Path, sig: signal.Signals, to_group: bool) -> None:
    """Ctrl-C in a terminal reaches the whole process group; `kill` or a supervisor, the script alone."""
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    (tmp_path / ".venv" / "bin" / "moa-local").write_text(FAKE_MOA)
    (tmp_path / ".venv" / "bin" / "moa-local").chmod(0o755)
    (tmp_path / "serving").mkdir()
    shutil.copy(DEMO, tmp_path / "serving" / "demo.sh")
    demo = subprocess.Popen(["bash", "serving/demo.sh", "cfg.yaml", "a question"], cwd=tmp_path,
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not (tmp_path / "up.started").exists():
            assert time.monotonic() < deadline and demo.poll() is None, "the stand-in `up` never started"
            time.sleep(0.05)
        if to_group:
            os.killpg(demo.pid, sig)
        else:
            os.kill(demo.pid, sig)
        assert demo.wait(timeout=60) == 128 + sig
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(demo.pid, signal.SIGKILL)  # what a failed run left in its own process group
    assert (tmp_path / "calls.log").read_text().split() == ["up", "up-stopped", "down"]
