"""The engine faults of the chaos runs, and what a client must see for each.

A fault is a fake-engine `Behavior` (slow, hanging, slow stream, cut
stream, error statuses, 429 with Retry-After, once or always) or a garble
mode of `garbled_engine.py` (answers that are not the protocol). For a
gateway whose mixture has three proposers with quorum 2, a 1 s layer
deadline and a 3 s request cap: `AGGREGATOR` says the status and error
code (prefix) when the fault is on the aggregator, `PROPOSER_STATUS` the
faulty proposer's status in the trace when it is on a proposer (the answer
itself is a 200 without it). `three_proposers` is that mixture; `apply`
puts a fault on an engine process.

Left out on purpose: the engines and gateway themselves, and the checks.
"""

from __future__ import annotations

from typing import Any

from tests.support.engine_processes import EngineProcess
from tests.support.garbled_engine import MODES as GARBLE_MODES

# Fault name -> the Behavior fields that make it. Garble modes are faults too (by their own names).
BEHAVIORS: dict[str, dict[str, Any]] = {
    "slow": {"latency_ms": 20_000},
    "hang": {"hang": True},
    "slow-stream": {"tokens": 40, "token_delay_ms": 500},
    "cut": {"cut_after": 2},
    "status-500": {"status": 500},
    "status-503": {"status": 503, "error_message": "engine overloaded"},
    "429-retry-after": {"status": 429, "retry_after": 0.1},
    "429-once": {"status": 429, "retry_after": 0.1, "times": 1},
}
AGGREGATOR: dict[str, tuple[int, str]] = {
    "slow": (504, "deadline_exceeded"),
    "hang": (504, "deadline_exceeded"),
    "slow-stream": (504, "deadline_exceeded"),
    "cut": (502, "backend_stream_broken"),
    "status-500": (502, "backend_failed"),
    "status-503": (502, "backend_failed"),
    "429-retry-after": (502, "backend_failed"),
    "429-once": (200, ""),
    **dict.fromkeys(GARBLE_MODES, (502, "backend_")),  # any backend code: the engine broke the protocol
}
PROPOSER_STATUS = {"slow": "late", "hang": "late", "slow-stream": "late", "429-once": "ok"}  # else "error"


def three_proposers(deadline_s: float | None = None, timeout_s: float = 60.0) -> dict[str, Any]:
    """The chaos mixture: proposers p1, p2, p3 (quorum 2), aggregator agg."""
    layer: dict[str, Any] = {"agents": [{"endpoint": p} for p in ("p1", "p2", "p3")], "min_ok": 2}
    if deadline_s is not None:
        layer["deadline_s"] = deadline_s
    return {"layers": [layer], "aggregator": {"endpoint": "agg"}, "timeout_s": timeout_s}


def apply(engine: EngineProcess, fault: str) -> None:
    if fault in BEHAVIORS:
        engine.set(**BEHAVIORS[fault])
    else:
        engine.garble(fault)
