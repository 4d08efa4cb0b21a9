"""An append-only JSONL result file that survives crashes and Ctrl-C: one complete line per record, or none.

`recover()` reads what an earlier run left: a torn last line (no trailing
newline, or not valid JSON: a crash in the middle of a write) is cut off,
so it is redone rather than kept half or duplicated; the complete records
are handed to a callback, for the runner to skip what they answer. `append` writes one
record as one line in one `write` call on a file opened for appending, so
an interruption (Ctrl-C is a cancellation between awaits; this code has
none) never leaves part of a line. Lines are fsync'ed in small groups and
at `close`: a machine crash loses at most the last group, which a rerun
redoes. The file is created on the first `append`, so a run with nothing
to write leaves none behind.

Left out on purpose: what a record means (`format.py`) and any locking
between two processes appending to one file (one job per file).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from moa_local.errors import BatchInputError

SYNC_EVERY = 32  # lines between two fsyncs


class ResultFile:
    def __init__(self, path: Path, *, sync_every: int = SYNC_EVERY) -> None:
        self.path = path
        self.sync_every = sync_every
        self.dropped = 0  # bytes of a torn last line cut off by `recover`
        self.written = 0  # records appended by this run
        self._fd: int | None = None
        self._unsynced = 0

    def recover(self, each: Callable[[dict[str, Any]], None]) -> int:
        """Pass each record already in the file to `each`, after cutting off a torn last line; the count."""
        try:
            handle = self.path.open("r+b")
        except FileNotFoundError:
            return 0
        except OSError as exc:
            raise BatchInputError(f"{self.path}: cannot open ({exc.strerror})") from None
        count = good_end = 0
        with handle:
            pending: tuple[int, bytes] | None = None  # a bad line is fatal unless it turns out to be the last
            for number, raw in enumerate(handle, start=1):
                if pending is not None:
                    raise BatchInputError(
                        f"{self.path}: line {pending[0]} is not a JSON object; not a result file of this job "
                        "(name another output file, or remove this one to start over)"
                    )
                record = _record(raw) if raw.endswith(b"\n") else None
                if record is None and raw.strip():
                    pending = (number, raw)
                    continue
                good_end += len(raw)
                if record is not None:
                    each(record)
                    count += 1
            size = handle.seek(0, os.SEEK_END)
            if good_end < size:  # the torn last line: cut it off, durably, before anything is appended
                self.dropped = size - good_end
                handle.truncate(good_end)
                os.fsync(handle.fileno())
        return count

    def append(self, record: dict[str, Any]) -> None:
        line = (json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n").encode()
        if self._fd is None:
            try:
                self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            except OSError as exc:
                raise BatchInputError(f"{self.path}: cannot write ({exc.strerror})") from None
        view = memoryview(line)
        while view:  # one write for a regular file; a short write (disk full) continues where it stopped
            view = view[os.write(self._fd, view) :]
        self.written += 1
        self._unsynced += 1
        if self._unsynced >= self.sync_every:
            self.sync()

    def create(self) -> None:
        """Make sure the file exists (empty if nothing was ever written)."""
        if self._fd is None and not self.path.exists():
            self.path.touch()

    def sync(self) -> None:
        if self._fd is not None and self._unsynced:
            os.fsync(self._fd)
            self._unsynced = 0

    def close(self) -> None:
        if self._fd is not None:
            self.sync()
            os.close(self._fd)
            self._fd = None


def _record(raw: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None
