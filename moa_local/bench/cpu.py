"""CPU time spent by local processes during a benchmark segment.

On a small machine the load generator, the gateway and the engines share
the cores, so wall-clock figures move with whatever else runs. CPU seconds
per request do not: `CpuWatch` reads the user + system time of the load
generator itself and of any local process given by PID (the gateway, a
fake engine) before and after a segment, from `/proc/<pid>/stat` (Linux).
A process that cannot be read is reported as such, never raised.
Processes are given as `LABEL=PID` (or a bare PID) by `--cpu-pid`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from moa_local.procfs import stat_fields

SELF = "load generator"


def process_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of `pid` so far, or None when it cannot be read."""
    fields = stat_fields(pid)  # fields 14 and 15, utime and stime, are at 11 and 12
    if fields is None:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def parse_pid(text: str) -> tuple[str, int]:
    """'gateway=1234' -> ('gateway', 1234); '1234' -> ('pid 1234', 1234)."""
    label, _, number = text.rpartition("=")
    if not number.strip().isdigit():
        raise ValueError(f"expected LABEL=PID or PID, got '{text}'")
    pid = int(number)
    return (label.strip() or f"pid {pid}"), pid


@dataclass
class CpuWatch:
    pids: tuple[tuple[str, int], ...] = ()  # (label, pid)
    _before: dict[str, float | None] = field(default_factory=dict)
    _after: dict[str, float | None] = field(default_factory=dict)

    def _read(self) -> dict[str, float | None]:
        times = os.times()
        values: dict[str, float | None] = {SELF: times.user + times.system}
        for label, pid in self.pids:
            values[label] = process_cpu_s(pid)
        return values

    def start(self) -> None:
        self._before = self._read()

    def stop(self) -> None:
        self._after = self._read()

    def figures(self, requests: int) -> list[dict[str, Any]]:
        rows = []
        for name, before in self._before.items():
            after = self._after.get(name)
            used = None if before is None or after is None else after - before
            rows.append({
                "process": name,
                "cpu_s": used,
                "cpu_ms_per_request": None if used is None or not requests else used / requests * 1000,
            })  # fmt: skip
        return rows
