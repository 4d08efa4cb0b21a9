"""The fields of /proc/<pid>/stat: names with spaces and parentheses, a missing process."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from moa_local.procfs import parse_stat, stat_fields


def test_fields_start_after_the_last_parenthesis_of_the_name() -> None:
    assert parse_stat("42 (a) (b c)) S 1 42 42 0")[:3] == ["S", "1", "42"]
    assert parse_stat("7 (plain) R 1 7 7")[0] == "R"


def test_a_live_process_with_an_awkward_name() -> None:
    script = "open('/proc/self/comm', 'w').write('x) (y z'); import time; time.sleep(30)"
    child = subprocess.Popen([sys.executable, "-c", script])
    try:
        for _ in range(500):
            with open(f"/proc/{child.pid}/comm") as handle:
                if handle.read().strip() == "x) (y z":
                    break
            time.sleep(0.01)
        fields = stat_fields(child.pid)
        assert fields is not None and fields[0] in ("R", "S") and fields[1] == str(os.getpid())
    finally:
        child.kill()
        child.wait()


def test_a_missing_process_reads_as_none() -> None:
    assert stat_fields(2**22 + 1) is None  # above the kernel's largest PID
