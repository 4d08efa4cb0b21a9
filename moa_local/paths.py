"""Where moa-local keeps what it downloads, builds and runs: one cache folder.

`MOA_LOCAL_CACHE` moves it (default `~/.cache/moa-local`); engines, models,
datasets, wheels and run folders all live under it.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    return Path(os.environ.get("MOA_LOCAL_CACHE") or "~/.cache/moa-local").expanduser()
