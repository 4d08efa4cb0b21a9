"""Fuzz the gateway with 10,000+ hostile requests; write the figures as JSON and Markdown.

The long run of `tests/reliability/test_fuzz.py`: the same families of
`tests/support/hostile_requests.py`, through hypothesis (derandomized: the
same cases every run), against the real gateway over loopback with fake
engines, each family with more cases, plus the exhaustive field-by-type
grid and the cases found before. Per family: the statuses, the answers
that broke a rule (a 5xx, a 4xx outside the envelope or not naming the
field), the tracebacks in the gateway's log, and whether the gateway was
healthy and idle afterwards. It asserts nothing; the figures say it.

    python bench/reliability/fuzz.py --out docs/reliability/fuzz      # ~10,500 requests, a few minutes
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # the test support modules live in the repository's tests/

import hypothesis  # noqa: E402
from figures import doc_for, publish  # noqa: E402

from tests.support.fuzz_target import FuzzTarget, LogWatch, Outcome, explore, summary  # noqa: E402
from tests.support.hostile_requests import FAMILIES  # noqa: E402
from tests.support.request_cases import chat, type_grid, with_value  # noqa: E402

COUNTS = {"valid": 2000, "wrong_types": 1500, "numbers": 800, "nesting": 600, "surrogates": 1000, "bytes": 1000,
          "sizes": 50, "routes": 1800, "headers": 1500}  # fmt: skip


def found_before() -> list[Any]:
    """Cases outside the families' ranges, kept because they once broke the gateway."""
    digits = json.dumps(with_value("max_tokens", 0)).replace('"max_tokens": 0', '"max_tokens": ' + "9" * 5000)
    return [chat(digits.encode(), "found", "max_tokens", "an integer of 5,000 digits")]


def run(scale: float) -> dict[str, Any]:
    families: dict[str, Any] = {}
    started = time.perf_counter()
    with LogWatch() as watch:
        target = FuzzTarget()
        try:
            for family in FAMILIES:
                t0 = time.perf_counter()
                outcomes: list[Outcome] = explore(target, family, max(1, round(COUNTS[family] * scale)))
                if family == "wrong_types":
                    outcomes += [target.try_case(case) for case in type_grid()]
                families[family] = _family(outcomes, watch, target, time.perf_counter() - t0)
                print(f"{family}: {families[family]['requests']} requests, {families[family]['problems']} problems, "
                      f"{families[family]['tracebacks']} tracebacks", file=sys.stderr)  # fmt: skip
            extra = [target.try_case(case) for case in found_before()]
            families["found"] = _family(extra, watch, target, 0.0)
        finally:
            target.stop()
    total = {key: sum(f[key] for f in families.values()) for key in ("requests", "server_errors", "problems",
                                                                      "tracebacks")}  # fmt: skip
    seconds = round(time.perf_counter() - started, 1)
    return {
        "run": {"date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "python": platform.python_version(),
                "hypothesis": hypothesis.__version__, "derandomized": True, "seconds": seconds},
        "total": {**total, "healthy_after_every_family": all(f["healthy_after"] for f in families.values())},
        "families": families,
    }  # fmt: skip


def _family(outcomes: list[Outcome], watch: LogWatch, target: FuzzTarget, seconds: float) -> dict[str, Any]:
    logged = watch.take()
    health = target.health_problems()
    return {**summary(outcomes), "tracebacks": sum("Traceback" in line for line in logged),
            "log_errors": len(logged), "first_traceback": _gist(logged[0]) if logged else None,
            "healthy_after": not health, "health_problems": health, "seconds": round(seconds, 1)}  # fmt: skip


def _gist(record: str) -> str:
    """A logged traceback's first line (the message) and last (the exception): no file paths."""
    lines = record.strip().splitlines()
    return lines[0] if len(lines) == 1 else f"{lines[0]} ... {lines[-1]}"


def markdown(result: dict[str, Any]) -> str:
    lines = [f"Fuzz run of {result['run']['date']}: {result['total']['requests']:,} requests in "
             f"{result['run']['seconds']:.0f} s (hypothesis {result['run']['hypothesis']}, derandomized).", "",
             "| family | requests | 2xx | 4xx | 5xx or no answer | rule broken | tracebacks | healthy after |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]  # fmt: skip
    for name, f in result["families"].items():
        statuses: dict[str, int] = f["statuses"]
        ok = sum(v for k, v in statuses.items() if k.startswith("2"))
        client = sum(v for k, v in statuses.items() if k.startswith("4"))
        lines.append(f"| {name} | {f['requests']:,} | {ok:,} | {client:,} | {f['server_errors']:,} | {f['problems']:,} "
                     f"| {f['tracebacks']:,} | {'yes' if f['healthy_after'] else 'NO'} |")  # fmt: skip
    t = result["total"]
    lines.append(f"| **all** | **{t['requests']:,}** | | | **{t['server_errors']:,}** | **{t['problems']:,}** "
                 f"| **{t['tracebacks']:,}** | {'yes' if t['healthy_after_every_family'] else 'NO'} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/reliability/fuzz", help="writes OUT.json and OUT.md")
    parser.add_argument(
        "--doc",
        default=None,
        help="the document whose figures to update (default: docs/reliability.md, when --out is left at its default)",
    )
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every family's case count")
    args = parser.parse_args()
    result = run(args.scale)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    out.with_suffix(".md").write_text(markdown(result))
    doc = doc_for(args.doc, args.out, "docs/reliability/fuzz")
    if doc is not None:
        publish(doc, "fuzz", markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
