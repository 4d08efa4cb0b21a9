"""The run folder's state file: which engine processes `up` started.

One JSON file per run folder, rewritten atomically (temp file + rename), so a
crash mid-write never leaves a torn file. It is written right after the
processes are spawned, before they are healthy, so `down` can always find
what an interrupted `up` left running. Its writers (`up` and `down`) hold
the run folder's lock (`run_lock`) from read to write, so two commands never
overwrite each other's records; readers need no lock. The file is a record,
not the only truth: the launcher also finds a run folder's engines in /proc.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from moa_local.errors import ServingError

STATE_FILE = "state.json"


@dataclass(frozen=True)
class EngineRecord:
    name: str  # endpoint name
    pid: int
    port: int
    health_url: str
    log: str
    marker: str  # value of the marker variable in the engine's environment
    command: tuple[str, ...]
    started_at: float  # unix time


def state_path(run_dir: Path) -> Path:
    return run_dir / STATE_FILE


def read_state(run_dir: Path) -> dict[str, EngineRecord]:
    path = state_path(run_dir)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ServingError(
            f"{path}: unreadable state file ({exc}); remove it after checking for stray engines"
        ) from None
    try:
        return {
            name: EngineRecord(**{**item, "command": tuple(item["command"])})
            for name, item in raw.get("engines", {}).items()
        }
    except (TypeError, KeyError, AttributeError) as exc:
        raise ServingError(f"{path}: malformed state file ({exc})") from None


def write_state(run_dir: Path, records: dict[str, EngineRecord]) -> None:
    path = state_path(run_dir)
    if not records:
        path.unlink(missing_ok=True)
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps({"engines": {name: asdict(r) for name, r in records.items()}}, indent=2) + "\n")
    os.replace(tmp, path)
