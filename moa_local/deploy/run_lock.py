"""The run folder's lock: one `up` or `down` at a time per run folder.

`run_lock(run_dir, command)` takes an exclusive `flock` on `<run folder>/lock`
without waiting: a second `up` or `down` on the same folder fails at once
with a line naming the holder's PID and command (an `up` may wait 15 minutes
for its engines; a second command silently queued behind it would look
hung). The holder writes its PID into the file for that message; the lock
itself is the `flock`, so a crashed holder never leaves a stale lock (the
kernel drops it with the process). The descriptor is close-on-exec: engines
spawned under the lock do not inherit it. Every writer of the state file
holds this lock; `status` only reads and takes none.

Left out: locks across hosts (a run folder on NFS is not supported) and
waiting for the holder.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from moa_local.errors import ServingError

LOCK_FILE = "lock"


def lock_path(run_dir: Path) -> Path:
    return run_dir / LOCK_FILE


@contextlib.contextmanager
def run_lock(run_dir: Path, command: str) -> Iterator[None]:
    """Hold the run folder's lock for the body, or raise `ServingError` naming who holds it."""
    path = lock_path(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise ServingError(f"{run_dir}: cannot use this run folder ({exc.strerror})") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise ServingError(f"{path}: cannot lock ({exc.strerror})") from None
            raise ServingError(
                f"{run_dir}: another moa-local command is using this run folder ({_holder(fd)}); "
                "wait for it to finish or stop it, then try again"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {command}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the flock


def _holder(fd: int) -> str:
    """'pid 1234, `up`' from the lock file, as far as the holder has written it."""
    try:
        pid, _, command = os.pread(fd, 256, 0).decode(errors="replace").strip().partition(" ")
    except OSError:
        pid, command = "", ""
    if not pid.isdigit():
        return "pid unknown"
    return f"pid {pid}, `{command}`" if command else f"pid {pid}"
