"""What a benchmark run is asked to do and what it yields: the plan, its segments, the result.

The runner fills these, the report and the plots read them; holding them here
keeps the runner, the report and the plots from importing one another.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from moa_local.bench.client import Target
from moa_local.bench.stats import RequestRecord, Summary


@dataclass(frozen=True)
class BenchPlan:
    url: str
    models: tuple[str, ...]
    out: Path
    concurrency: tuple[int, ...] = (1, 4, 16)
    rates: tuple[float, ...] = ()
    requests: int = 32
    max_tokens: int = 64
    dataset: str = "builtin"
    duration_limit_s: float | None = None
    engine_metrics: tuple[str, ...] = ()
    cpu_pids: tuple[tuple[str, int], ...] = ()  # local processes whose CPU time to report: (label, pid)
    timeout_s: float = 300.0
    warmup: int = 0
    api_key: str | None = None
    trace: bool = True
    temperature: float | None = None
    seed: int = 0

    def target(self, model: str) -> Target:
        return Target(self.url, model, self.max_tokens, self.temperature, self.trace, self.api_key, self.timeout_s)

    def as_dict(self) -> dict[str, Any]:
        data = {name: getattr(self, name) for name in self.__dataclass_fields__ if name != "api_key"}
        data["out"] = str(self.out)
        data["cpu_pids"] = [label for label, _ in self.cpu_pids]
        return data


@dataclass
class Segment:
    summary: Summary
    engines: list[dict[str, Any]]
    records: list[RequestRecord]
    cpu: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class BenchResult:
    plan: BenchPlan
    started_at: str
    segments: list[Segment] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def machine(self) -> dict[str, Any]:
        return {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}
