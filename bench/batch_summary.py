"""The batch benchmark's two targets and its figures, from one `bench/batch.sh` output folder.

Reads `direct-<n>.json` (`bench/saturation.py --window 0 --batch N`: the
batch's calls sent straight to the engines), `cli-<n>.json`
(`bench/batch_cli.py`: the same prompts through `moa-local batch`) and
`ttft/ttft.json` (`bench/batch_ttft.py`), and writes `summary.json` (the
target rows and the figures behind them) and `summary.md`, and prints
the rows in the table format of docs/benchmarks.md:

- throughput: `moa-local batch` generated tokens/s (the answers' usage)
  against the direct batch's (the engines' counters), the mean of the runs
  of each side: target >= 95%;
- TTFT: interactive time to first token p50 at concurrency 1 with a batch
  running on the gateway against idle engines: target <= 1.5x. The row
  says what the gateway's admission queue held meanwhile (interactive
  calls waiting, and their estimated mean wait; batch calls waiting) and
  the engines' own (running and waiting requests). It is not judged when
  the batch did not load the engines or ended before the interactive run.

    python bench/batch_summary.py bench-out/batch
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

THROUGHPUT_SHARE = 95.0  # % of the direct batch
TTFT_RATIO = 1.5  # x idle


def row(target: str, measured: str, met: bool | None) -> dict[str, Any]:
    return {"target": target, "measured": measured, "status": "n/a" if met is None else "met" if met else "missed"}


def throughput_row(direct: list[dict[str, Any]], cli: list[dict[str, Any]]) -> dict[str, Any]:
    """`direct`: saturation.py's `direct_batch` objects; `cli`: batch_cli.py's results, one per run."""
    name = f"{cli[0]['prompts']} prompts" if cli else "no run"
    target = f"moa-local batch >= {THROUGHPUT_SHARE:g}% of the direct batch ({name})"
    rates = [d["generated_tokens_per_s"] for d in direct]
    if not direct or not cli or None in rates:
        return row(target, "unknown: " + ("no moa-local batch run" if not cli else "no direct batch measured"), None)
    ceiling, rate = statistics.mean(rates), statistics.mean(c["generated_tokens_per_s"] for c in cli)
    share = rate / ceiling * 100
    runs = f"{_span([d['wall_s'] for d in direct])} direct, {_span([c['wall_s'] for c in cli])} moa-local batch"
    errors = sum(d["errors"] for d in direct) + sum(c["errors"] for c in cli)
    measured = (f"{share:.0f}% ({rate:.1f} of {ceiling:.1f} generated tok/s; {runs}"
                + (f"; {errors} failed calls or lines" if errors else "") + ")")  # fmt: skip
    return row(target, measured, share >= THROUGHPUT_SHARE)


def _span(walls: list[float]) -> str:
    if len(walls) == 1:
        return f"{walls[0]:.0f} s"
    return f"{len(walls)} runs {min(walls):.0f}-{max(walls):.0f} s"


def ttft_row(ttft: dict[str, Any]) -> dict[str, Any]:
    batch, idle, loaded = ttft["batch"], ttft["idle"], ttft["loaded"]
    target = f"interactive TTFT p50 under a batch <= {TTFT_RATIO:g}x idle ({ttft['model']}, c=1)"
    ratio = ttft.get("ttft_ratio")
    if ratio is None:
        return row(target, "unknown: no successful request in one of the runs", None)
    measured = (f"{ratio:.2f}x ({idle['ttft_p50_s']:.2f} s idle -> {loaded['ttft_p50_s']:.2f} s under a "
                f"{batch['lines']}-line batch of {', '.join(batch['models'])}; {queues(loaded)})")  # fmt: skip
    if not batch["lasted"]:
        why = "did not load every engine" if not batch["loaded"] else "ended before the interactive run did"
        return row(target, f"not judged: the batch {why}; {measured}", None)
    return row(target, measured, ratio <= TTFT_RATIO)


def queues(loaded: dict[str, Any]) -> str:
    """What waited where during the loaded run: our admission queue, then the engines' own."""
    gauges = loaded["gauges"]
    endpoints, engines = gauges.get("endpoints", {}), gauges.get("engines", {})
    if not gauges.get("samples"):
        return "no gauge samples"
    ours = sum(g["interactive_waiting"]["mean"] for g in endpoints.values() if "interactive_waiting" in g)
    peak = max((g["interactive_waiting"]["peak"] for g in endpoints.values() if "interactive_waiting" in g), default=0)
    batch = sum(g["batch_waiting"]["mean"] for g in endpoints.values() if "batch_waiting" in g)
    wait = loaded.get("admission_wait_per_call_s")
    parts = [f"our queue: interactive calls waiting {ours:.2f} on mean (peak {peak:g})"
             + (f", about {wait * 1000:.0f} ms per call" if wait is not None else "")
             + f", batch calls {batch:.1f}"]  # fmt: skip
    for name, g in sorted(engines.items()):
        running, waiting = g.get("running"), g.get("waiting")
        if running and waiting:
            parts.append(f"{name} ran {running['mean']:.1f} requests on mean, {waiting['mean']:.1f} waiting "
                         f"(peak {waiting['peak']:g})")  # fmt: skip
    return "; ".join(parts)


def load(folder: Path) -> dict[str, Any]:
    """The folder's runs: direct batches and moa-local batch runs in run order, and the TTFT measurement."""

    def runs(prefix: str) -> list[dict[str, Any]]:
        """Each `<prefix>-<run>.json` with its run number (its place in the script's ORDER), in run order."""
        numbered = sorted((int(p.stem.rsplit("-", 1)[1]), p) for p in folder.glob(f"{prefix}-*.json"))
        found = [(run, json.loads(p.read_text())) for run, p in numbered]
        return [{**(data["direct_batch"] if prefix == "direct" else data), "run": run} for run, data in found]

    ttft = folder / "ttft" / "ttft.json"
    return {
        "direct": runs("direct"),
        "cli": runs("cli"),
        "ttft": json.loads(ttft.read_text()) if ttft.is_file() else None,
    }


def summarize(folder: Path) -> dict[str, Any]:
    figures = load(folder)
    rows = [throughput_row(figures["direct"], figures["cli"])]
    if figures["ttft"] is not None:
        rows.append(ttft_row(figures["ttft"]))
    return {"targets": rows, **figures}


def markdown(summary: dict[str, Any]) -> str:
    lines = ["# Batch jobs on the CPU engines", "", *table(summary["targets"])]
    if summary["direct"] or summary["cli"]:
        lines += ["", "## Throughput runs", "", "| run | wall s | generated tok/s | engines' count tok/s | errors |",
                  "|---|---:|---:|---:|---:|"]  # fmt: skip
    runs = [(side, run) for side in ("direct", "cli") for run in summary[side]]
    for side, run in sorted(runs, key=lambda pair: pair[1].get("run", 0)):
        # The direct batch's rate is the engines' count; moa-local batch's is the answers' usage, checked by it.
        engines = run["generated_tokens_per_s"] if side == "direct" else run.get("engine_generated_tokens_per_s")
        label = "direct batch" if side == "direct" else "moa-local batch"
        lines.append(f"| {run.get('run', '-')}: {label} | {run['wall_s']:.0f} | {run['generated_tokens_per_s']:.1f} | "
                     f"{engines or 0:.1f} | {run['errors']} |")  # fmt: skip
    ttft = summary.get("ttft")
    if ttft:
        lines += ["", "## Interactive requests", "", "| run | TTFT p50 s | TTFT p95 s | e2e p50 s | gateway's part "
                  "of TTFT p50 ms | errors |", "|---|---:|---:|---:|---:|---:|"]  # fmt: skip
        for name in ("idle", "loaded"):
            run = ttft[name]
            part = run["gateway_ttft_part_p50_s"]
            lines.append(f"| {name} | {run['ttft_p50_s'] or 0:.2f} | {run['ttft_p95_s'] or 0:.2f} | "
                         f"{run['e2e_p50_s'] or 0:.2f} | {(part or 0) * 1000:.1f} | {run['errors']} |")  # fmt: skip
        batch = ttft["batch"]
        lines += ["", f"The batch (`{batch['id']}`): loaded the engines after {batch['loaded_after_s']:.0f} s; "
                  f"{_state(batch['before'])} when the loaded run started, {_state(batch['after'])} when it ended, "
                  f"{_state(batch['end'])} at the end."]  # fmt: skip
    return "\n".join(lines) + "\n"


def _state(state: dict[str, Any]) -> str:
    counts = state.get("counts") or {}
    return f"{state['status']} ({counts.get('completed', 0)}/{counts.get('total', 0)} lines done)"


def table(rows: list[dict[str, Any]]) -> list[str]:
    return ["| target | measured | status |", "|---|---|---|",
            *(f"| {r['target']} | {r['measured']} | {r['status']} |" for r in rows)]  # fmt: skip


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: batch_summary.py OUT_DIR", file=sys.stderr)
        return 2
    folder = Path(argv[0])
    if not folder.is_dir():
        print(f"batch_summary.py: {folder}: no such folder", file=sys.stderr)
        return 1
    summary = summarize(folder)
    (folder / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (folder / "summary.md").write_text(markdown(summary))
    print("\n".join(table(summary["targets"])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
