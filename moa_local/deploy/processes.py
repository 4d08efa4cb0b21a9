"""Engine processes seen through /proc: ownership, discovery, liveness, signals, memory.

A recorded PID is only ever signalled after checking that it still belongs to
the engine we started: its environment carries our marker variable (or, when
the environment cannot be read, its command line names the recorded program).
The same test finds a run folder's engines without the state file
(`find_engines`): the marker starts with the run folder's path. Engines run
as session leaders, so their children share the leader's process group; a
SIGKILL after the grace period goes to the whole group. Linux only.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from moa_local.procfs import PROC, stat_fields

MARKER_ENV = "MOA_LOCAL_ENGINE_ID"


def is_alive(pid: int) -> bool:
    """True while the process exists and is not a zombie (zombies of our own are reaped)."""
    fields = stat_fields(pid)
    if fields is None:
        return False
    if fields[0] in ("Z", "X"):
        reap(pid)
        return False
    return True


def reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):  # not our child: its own parent reaps it
        os.waitpid(pid, os.WNOHANG)


def _environ(pid: int) -> dict[str, str] | None:
    try:
        raw = (PROC / str(pid) / "environ").read_bytes()
    except OSError:
        return None
    pairs = (item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
    return {key.decode(errors="replace"): value.decode(errors="replace") for key, value in pairs}


def cmdline(pid: int) -> list[str]:
    try:
        raw = (PROC / str(pid) / "cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def is_ours(pid: int, marker: str, command: Sequence[str]) -> bool:
    """Does `pid` still run the engine we started (and not a reused PID)?"""
    if not is_alive(pid):
        return False
    env = _environ(pid)
    if env is not None:
        return env.get(MARKER_ENV) == marker
    return cmdline(pid)[: len(command)] == list(command)


def marker_for(run_root: str, name: str, token: str) -> str:
    """The marker of endpoint `name`'s engine started from the run folder at `run_root` (resolved)."""
    return f"{run_root}#{name}#{token}"


@dataclass(frozen=True)
class FoundEngine:
    name: str
    pid: int
    marker: str  # "" when its environment could not be read
    command: tuple[str, ...]


def engine_name(
    environ: Mapping[str, str] | None, command: Sequence[str], run_root: str, commands: Mapping[str, Sequence[str]]
) -> str | None:
    """Which endpoint's engine of the run folder `run_root` a process is, if any.

    Its environment decides when it can be read: the marker names run folder and endpoint.
    Only when it cannot, the command line must be an endpoint's command, or end with it (a
    script run by its `#!` interpreter shows the interpreter first).
    """
    if environ is not None:
        root, _, rest = environ.get(MARKER_ENV, "").rpartition("#")[0].rpartition("#")
        return rest if root == run_root and rest else None
    for name, expected in commands.items():
        if expected and list(command[-len(expected) :]) == list(expected):
            return name
    return None


def find_engines(run_root: str, commands: Mapping[str, Sequence[str]]) -> list[FoundEngine]:
    """This user's session leaders that are engines of the run folder `run_root` (see `engine_name`)."""
    found = []
    uid = os.getuid()
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        fields = stat_fields(pid)
        if fields is None or len(fields) < 4 or fields[3] != entry.name or fields[0] in ("Z", "X"):
            continue  # gone, or not a session leader (an engine's own workers carry its marker too)
        try:
            if entry.stat().st_uid != uid:
                continue
        except OSError:
            continue
        environ, command = _environ(pid), cmdline(pid)
        name = engine_name(environ, command, run_root, commands)
        if name is not None:
            marker = environ.get(MARKER_ENV, "") if environ is not None else ""
            found.append(FoundEngine(name, pid, marker, tuple(command)))
    return found


def group_members(pgid: int) -> list[int]:
    members = []
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            fields = stat_fields(int(entry.name))
            if fields is not None and len(fields) > 2 and fields[2] == str(pgid) and fields[0] not in ("Z", "X"):
                members.append(int(entry.name))
    return members


def group_memory_bytes(pgid: int) -> int:
    """Memory of the group (the server and its engine workers): the sum of their proportional
    set sizes, so pages they share are counted once, not once per process."""
    total = 0
    for pid in group_members(pgid):
        try:
            rollup = (PROC / str(pid) / "smaps_rollup").read_text()
        except OSError:
            continue
        for line in rollup.splitlines():
            if line.startswith("Pss:"):
                total += int(line.split()[1]) * 1024
                break
    return total


def _signal(pid: int, sig: signal.Signals, group: bool) -> None:
    try:
        if group:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass


def terminate(pids: Sequence[int], grace_s: float, hurry: Callable[[], bool] | None = None) -> dict[int, str]:
    """SIGTERM each leader, wait for the groups to exit, SIGKILL what is left.

    `hurry`, polled while waiting, cuts the grace period short when it returns True.
    Returns, per PID, "stopped" (exited on SIGTERM) or "killed".
    """
    for pid in pids:
        _signal(pid, signal.SIGTERM, group=False)
    deadline = time.monotonic() + grace_s
    outcome: dict[int, str] = {}
    pending = list(pids)
    while pending and time.monotonic() < deadline:
        for pid in list(pending):
            if not is_alive(pid) and not group_members(pid):
                outcome[pid] = "stopped"
                pending.remove(pid)
        if pending and hurry is not None and hurry():
            break
        if pending:
            time.sleep(0.2)
    for pid in pending:
        _signal(pid, signal.SIGKILL, group=True)
        outcome[pid] = "killed"
    kill_deadline = time.monotonic() + 10
    while any(is_alive(pid) or group_members(pid) for pid in pending) and time.monotonic() < kill_deadline:
        time.sleep(0.1)
    return outcome


def log_tail(path: Path, lines: int = 20) -> str:
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 64 * 1024))
            text = handle.read().decode(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])
