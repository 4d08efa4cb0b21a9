"""Read the Grafana dashboard's PromQL: every target, and the metric names each one uses.

Shared by tests/test_dashboard.py (names exist) and the Prometheus end-to-end
test (every query returns data).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DASHBOARD = Path(__file__).resolve().parents[2] / "serving" / "grafana" / "dashboards" / "moa-local.json"

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^}]*\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENTIFIER = re.compile(r"(?<![\w.$])[a-zA-Z_:][a-zA-Z0-9_:]*")
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan", "group_left", "group_right", "on", "ignoring"}


@dataclass(frozen=True)
class Target:
    panel: str
    expr: str


def load_dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def targets(dashboard: dict[str, Any] | None = None) -> list[Target]:
    board = dashboard if dashboard is not None else load_dashboard()
    found = []
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            found.append(Target(panel["title"], target["expr"]))
    return found


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (functions, labels and keywords left out)."""
    text = _STRING.sub('""', expr)
    text = _MATCHERS.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    names = set()
    for match in _IDENTIFIER.finditer(text):
        word = match.group()
        if text[match.end() :].lstrip().startswith("(") or word.lower() in _KEYWORDS:
            continue  # a function or aggregation, or an operator
        names.add(word)
    return names


def instantiate(expr: str, rate_interval: str = "1m", whole_range: str = "10m") -> str:
    """The query as Grafana sends it with every variable at "All"."""
    return (
        expr.replace("$__rate_interval", rate_interval)
        .replace("$__range", whole_range)
        .replace('"$mixture"', '".*"')
        .replace('"$endpoint"', '".*"')
    )
