"""Writing the rendered files into a folder: whole files only, and no stale file of ours left behind.

Each file is written beside its final name and renamed into place, so an
interrupted run leaves the previous file or the new one, never half of one
(and removes its temporary file). A `.yaml` file in the folder that begins
as ours do but is no longer rendered (an engine removed from the config) is
deleted; any other file is left alone.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from moa_local.deploy.k8s.manifests import GENERATED


def write_folder(files: dict[str, str], out: Path) -> list[str]:
    """Write every file into `out` (created if missing); returns the stale files it removed."""
    out.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        _write_whole(out / name, text)
    removed = []
    for path in sorted(out.glob("*.yaml")):
        if path.name not in files and _is_ours(path):
            path.unlink()
            removed.append(path.name)
    return removed


def _write_whole(path: Path, text: str) -> None:
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
            os.fchmod(stream.fileno(), 0o644)  # as an ordinary file; mkstemp makes it private
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _is_ours(path: Path) -> bool:
    try:
        with path.open(encoding="utf-8") as stream:
            return stream.read(len(GENERATED)) == GENERATED
    except (OSError, UnicodeDecodeError):
        return False
