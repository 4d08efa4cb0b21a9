"""The fields of `/proc/<pid>/stat` (Linux), parsed once for `deploy/` and `bench/`.

The command name (the 2nd field) is in parentheses and may itself hold
spaces and parentheses, so the fields are split after its last ")".
Left out: what the fields mean to each caller (liveness and process groups
in `deploy/processes.py`, CPU time in `bench/cpu.py`) and every other file
under /proc.
"""

from __future__ import annotations

from pathlib import Path

PROC = Path("/proc")


def stat_fields(pid: int) -> list[str] | None:
    """The fields of `pid`'s stat after its command name (state first), or None when it cannot be read."""
    try:
        raw = (PROC / str(pid) / "stat").read_bytes()
    except OSError:
        return None
    return parse_stat(raw.decode(errors="replace"))


def parse_stat(text: str) -> list[str]:
    """'1234 (a (b) c) S 1 ...' -> ['S', '1', ...]: field 3 onward, at index 0 onward."""
    return text[text.rfind(")") + 2 :].split()
