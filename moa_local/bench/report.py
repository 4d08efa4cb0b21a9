"""What a benchmark run leaves behind: results.json, records.jsonl, summary.md, plots.

- `results.json`: the plan, the machine, every segment's summary and engine
  figures, and notes (a duration limit reached, plots skipped, ...).
- `records.jsonl`: one line per request, the raw material of the summaries.
- `summary.md`: the same figures as Markdown tables, plots embedded.
- PNG plots (`plots.py`), when matplotlib is installed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from moa_local.bench.result import BenchResult, Segment
from moa_local.bench.stats import Spread

SCHEMA = 1


def write_report(result: BenchResult) -> list[Path]:
    """Write every output file into the plan's folder; return their paths."""
    from moa_local.bench.plots import write_plots

    out = result.plan.out
    plots, note = write_plots(result, out)
    if note:
        result.notes.append(note)
    records = out / "records.jsonl"
    with records.open("w", encoding="utf-8") as handle:
        for segment in result.segments:
            for record in segment.records:
                handle.write(json.dumps(record.as_dict()) + "\n")
    results = out / "results.json"
    results.write_text(json.dumps(results_document(result), indent=2) + "\n", encoding="utf-8")
    summary = out / "summary.md"
    summary.write_text(markdown(result, [plot.name for plot in plots]), encoding="utf-8")
    return [results, records, summary, *plots]


def results_document(result: BenchResult) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "started_at": result.started_at,
        "machine": result.machine(),
        "plan": result.plan.as_dict(),
        "segments": [
            {**segment.summary.as_dict(), "engines": segment.engines, "cpu": segment.cpu} for segment in result.segments
        ],
        "notes": result.notes,
    }


def markdown(result: BenchResult, plots: list[str]) -> str:
    plan, machine = result.plan, result.machine()
    lines = [
        f"# Benchmark: {', '.join(plan.models)}",
        "",
        f"- started {result.started_at} against `{plan.url}`, dataset `{plan.dataset}`, "
        f"max_tokens {plan.max_tokens}, {plan.requests} requests per level",
        f"- machine: {machine['cpus']} CPUs, {machine['platform']}, Python {machine['python']} "
        "(load generator, gateway and engines share them)",
        "",
        "| model | load | ok | err | req/s | answer tok/s | generated tok/s | TTFT p50 / p95 / p99 ms "
        "| e2e p50 / p95 / p99 s | ITL p50 / p99 ms | overhead p50 / p99 ms | overhead share p50 "
        "| gateway's part of TTFT p50 ms |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [_row(segment) for segment in result.segments]
    lines += [
        "",
        "Answer tokens are the answer's own (a mixture's aggregator); generated tokens count every call. "
        "Overhead is the gateway's trace: wall time minus the critical path (slowest agent of each layer plus "
        "the aggregator). The gateway's part of TTFT is the client's time to first token minus the engines' "
        "part of it (slowest agent of each layer plus the aggregator's own time to first token); it includes "
        "the extra loopback hop. Both need the trace (not sent to a bare engine).",
    ]
    engine_rows = [_engine_row(segment, engine) for segment in result.segments for engine in segment.engines]
    if engine_rows:
        lines += [
            "",
            "Engine-side figures (each engine's `/metrics`, before and after the segment). Busy is the share "
            "of the gauge samples taken during the segment with at least one request running; mean running "
            "averages the same samples:",
            "",
            "| model | load | engine | generated tokens | generated tok/s | prefix-cache hits | peak KV cache "
            "| peak running | peak waiting | busy | mean running |",
            "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
            *engine_rows,
        ]
    cpu_rows = [_cpu_row(segment, row) for segment in result.segments for row in segment.cpu]
    if cpu_rows:
        lines += [
            "",
            "CPU time during each segment (user + system), per request sent:",
            "",
            "| model | load | process | CPU s | CPU ms per request |",
            "|---|---|---|---:|---:|",
            *cpu_rows,
        ]
    errors = [(s, kind, n) for s in result.segments for kind, n in s.summary.error_kinds.items()]
    if errors:
        lines += ["", "Errors:", ""]
        lines += [f"- {s.summary.model} {_load(s)}: {n} x {kind}" for s, kind, n in errors]
    if result.notes:
        lines += ["", "Notes:", "", *[f"- {note}" for note in result.notes]]
    if plots:
        lines += ["", *[f"![{name}]({name})" for name in plots]]
    return "\n".join(lines) + "\n"


def _load(segment: Segment) -> str:
    summary = segment.summary
    return f"c={summary.level:g}" if summary.mode == "closed" else f"{summary.level:g} req/s"


def _row(segment: Segment) -> str:
    s = segment.summary
    return (
        f"| {s.model} | {_load(segment)} | {s.ok} | {s.errors} | {s.requests_per_s:.2f} | "
        f"{s.output_tokens_per_s:.1f} | {s.generated_tokens_per_s:.1f} | {_triple(s.ttft_s, 1000, 0)} | "
        f"{_triple(s.e2e_s, 1, 2)} | {_pair(s.itl_s, 1000, 1)} | {_pair(s.overhead_s, 1000, 2)} | "
        f"{_percent(s.overhead_share.p50, 3)} | {_fmt(s.added_ttft_s.p50, 1000, 2)} |"
    )


def _engine_row(segment: Segment, engine: dict[str, Any]) -> str:
    def number(key: str, digits: int) -> str:
        return _fmt(engine.get(key), 1, digits)

    return (
        f"| {segment.summary.model} | {_load(segment)} | {engine['url']} | {number('generated_tokens', 0)} | "
        f"{number('generation_tokens_per_s', 1)} | {_percent(engine.get('prefix_cache_hit_rate'))} | "
        f"{_percent(engine.get('peak_kv_cache_usage'))} | {number('peak_running', 0)} | {number('peak_waiting', 0)} | "
        f"{_percent(engine.get('busy_share'), 0)} | {number('mean_running', 1)} |"
    )


def _cpu_row(segment: Segment, row: dict[str, Any]) -> str:
    used, per = row.get("cpu_s"), row.get("cpu_ms_per_request")
    shown = "unreadable" if used is None else f"{used:.2f}"
    return f"| {segment.summary.model} | {_load(segment)} | {row['process']} | {shown} | {_fmt(per, 1, 2)} |"


def _fmt(value: float | None, scale: float, digits: int) -> str:
    return "-" if value is None else f"{value * scale:.{digits}f}"


def _triple(spread: Spread, scale: float, digits: int) -> str:
    return " / ".join(_fmt(v, scale, digits) for v in (spread.p50, spread.p95, spread.p99))


def _pair(spread: Spread, scale: float, digits: int) -> str:
    return " / ".join(_fmt(v, scale, digits) for v in (spread.p50, spread.p99))


def _percent(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value * 100:.{digits}f}%"
