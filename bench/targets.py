"""The benchmark targets, read from one `bench/run_all.sh` output folder.

Prints a Markdown table (target, measured, met or missed) and writes
`targets.json` next to the runs. Each figure comes from the runs' own
`results.json`, `records.jsonl` and the batch scripts' JSON files:

- overhead at concurrency 1 on instant engines: `fake/overhead`, the
  mixture's trace overhead (wall time minus critical path) p50 and p99;
- overhead at concurrency 16 on the CPU engines: `cpu/mixture-vs-endpoints`,
  the mixture's overhead as a share of end-to-end latency (median of the
  per-request ratio);
- pass-through: `cpu/passthrough`, the pooled ABBA rounds: the gateway's part
  of each request's time to first token (client TTFT minus the engine's, from
  the trace; judged against the direct p50), the A/B difference of the p50s
  (noisier: runs minutes apart), and answer tokens/s at concurrency 16
  (the mean of the runs per side, with their range, and the gateway's CPU
  time over its runs' wall time: on a machine whose cores the engines keep
  busy, the most throughput it can take from them);
- batch: `cpu/batch/<mixture>` generated tokens/s (every call's tokens),
  judged against the same batch's calls sent straight to the engines, all
  at once, each endpoint at most its `max_concurrency` in flight, no layer
  waiting on another (`direct_batch` in `cpu/saturation-<mixture>.json`):
  the engines' throughput for exactly that work, with only the mixture's
  dependencies taken away. Also against the reference pattern
  (`cpu/reference-<mixture>.json`). For context, the batch against the
  engines' summed saturated rates (each engine kept busy with its share of
  the calls at once): the lineup's use of the engines, not a target. A
  mixture fixes how its work splits between engines (which agents run
  where, their max_tokens, the aggregator), so the sum is reachable only
  when that split matches the engines' speeds; otherwise the faster engine
  runs out of work while the slower one is still generating, and no
  scheduler can close the gap short of moving work between engines, which
  changes the mixture. The context row adds the busiest engine's busy
  share during the batch (the share of the gauge samples in which it had
  a request running);
- capacity: the best closed-loop MoA requests/s with zero errors in
  `fake/capacity`, and the open-loop rates served with zero errors;
- batch jobs: the rows `bench/batch_summary.py` judged into
  `batch/summary.json` (`bench/batch.sh OUT_DIR/batch`): `moa-local batch`
  against the direct batch, and interactive TTFT under a gateway batch.

    python bench/targets.py bench-out/20261121-070000
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any


def results(folder: Path) -> list[dict[str, Any]]:
    segments: list[dict[str, Any]] = json.loads((folder / "results.json").read_text())["segments"]
    return segments


def segment(folder: Path, model: str, level: float) -> dict[str, Any]:
    return next(s for s in results(folder) if s["model"] == model and s["level"] == level)


def records(folders: list[Path]) -> list[dict[str, Any]]:
    rows = []
    for folder in folders:
        rows += [json.loads(line) for line in (folder / "records.jsonl").read_text().splitlines()]
    return rows


def row(target: str, measured: str, met: bool | None) -> dict[str, Any]:
    return {"target": target, "measured": measured, "status": "n/a" if met is None else "met" if met else "missed"}


def overhead_rows(out: Path) -> list[dict[str, Any]]:
    rows = []
    fake = out / "fake" / "overhead"
    if fake.is_dir():
        s = segment(fake, "moa-fake", 1.0)
        p50, p99 = s["overhead_s"]["p50"] * 1000, s["overhead_s"]["p99"] * 1000
        rows.append(row("overhead p50 <= 2 ms, c=1, instant engines", f"{p50:.2f} ms", p50 <= 2))
        rows.append(row("overhead p99 <= 10 ms, c=1, instant engines", f"{p99:.2f} ms", p99 <= 10))
    cpu = out / "cpu" / "mixture-vs-endpoints"
    if cpu.is_dir():
        s = segment(cpu, "moa-bench", 16.0)
        share = s["overhead_share"]["p50"] * 100
        rows.append(row("overhead <= 2% of e2e, c=16, CPU engines",
                        f"{share:.2f}% (p50 {s['overhead_s']['p50'] * 1000:.1f} ms of "
                        f"{s['e2e_s']['p50']:.1f} s)", share <= 2))  # fmt: skip
    return rows


def passthrough_rows(out: Path) -> list[dict[str, Any]]:
    rows = []
    folder = out / "cpu" / "passthrough"
    names = sorted({path.name.split("-")[0] for path in folder.glob("*-ttft")}) if folder.is_dir() else []
    for name in names:
        ttft = {}
        for side in ("direct", "gateway"):
            pooled = records(sorted(folder.glob(f"{name}-*-{side}-ttft")))
            ttft[side] = statistics.median(r["ttft_s"] for r in pooled if r["ok"] and r["ttft_s"] is not None)
        ab = (ttft["gateway"] / ttft["direct"] - 1) * 100
        pooled = records(sorted(folder.glob(f"{name}-*-gateway-ttft")))
        traced = [r for r in pooled if r["ok"] and r["ttft_s"] is not None and r.get("path_ttft_s") is not None]
        part = statistics.median(r["ttft_s"] - r["path_ttft_s"] for r in traced)
        share = part / ttft["direct"] * 100
        rows.append(row(f"pass-through adds <= 5% to p50 TTFT ({name})",
                        f"{share:.1f}% in-request ({part * 1000:.1f} ms of {ttft['direct'] * 1000:.0f} ms); "
                        f"A/B runs {ab:+.1f}% ({ttft['direct'] * 1000:.1f} -> {ttft['gateway'] * 1000:.1f} ms)",
                        share <= 5))  # fmt: skip
        rate, spread = {}, []
        for side in ("direct", "gateway"):
            runs = [results(f)[0]["output_tokens_per_s"] for f in sorted(folder.glob(f"{name}-*-{side}-throughput"))]
            rate[side] = statistics.mean(runs)
            spread.append(f"{side} {len(runs)} runs {min(runs):.1f}-{max(runs):.1f}")
        share = rate["gateway"] / rate["direct"] * 100
        measured = f"{share:.1f}% ({rate['direct']:.1f} -> {rate['gateway']:.1f} tok/s; {', '.join(spread)}"
        core = gateway_core_share([results(f)[0] for f in sorted(folder.glob(f"{name}-*-gateway-throughput"))])
        measured += f"; the gateway used {core * 100:.1f}% of one core in its runs)" if core is not None else ")"
        rows.append(row(f"pass-through >= 97% of direct throughput ({name}, c=16)", measured, share >= 97))
    return rows


def gateway_core_share(segments: list[dict[str, Any]]) -> float | None:
    """The gateway's CPU time over the runs' wall time: the most of the engines' CPU it can have taken."""
    cpu = [next((p["cpu_s"] for p in s.get("cpu") or [] if p["process"] == "gateway"), None) for s in segments]
    if not segments or None in cpu:
        return None
    return sum(c for c in cpu if c is not None) / sum(s["wall_s"] for s in segments)


def batch_rows(out: Path) -> list[dict[str, Any]]:
    cpu = out / "cpu"
    rows = []
    for folder in sorted(p for p in (cpu / "batch").glob("*") if (p / "results.json").is_file()):
        batch = results(folder)[0]
        mixture, rate = batch["model"], batch["generated_tokens_per_s"]
        saturation_file, reference_file = cpu / f"saturation-{mixture}.json", cpu / f"reference-{mixture}.json"
        if saturation_file.is_file():
            saturation = json.loads(saturation_file.read_text())
            rows += saturation_rows(mixture, batch, saturation)
        if reference_file.is_file():
            reference = json.loads(reference_file.read_text())["generated_tokens_per_s"]
            rows.append(row(f"batch >= 3x the one-at-a-time reference pattern ({mixture})",
                            f"{rate / reference:.1f}x ({rate:.1f} vs {reference:.1f} generated tok/s)",
                            rate / reference >= 3))  # fmt: skip
    return rows


def saturation_rows(mixture: str, batch: dict[str, Any], saturation: dict[str, Any]) -> list[dict[str, Any]]:
    """The judged row (against the same calls sent straight to the engines) and the context row (against the
    engines' summed saturated rates)."""
    rate, rows = batch["generated_tokens_per_s"], []
    target = f"batch >= 85% of the engines' saturated throughput for its own work ({mixture})"
    direct = saturation.get("direct_batch") or {}
    ceiling = direct.get("generated_tokens_per_s")
    if not ceiling:
        rows.append(row(target, "unknown: no direct batch of the same calls was measured", None))
    else:
        share = rate / ceiling * 100
        rows.append(row(target,
                        f"{share:.0f}% ({rate:.1f} of {ceiling:.1f} generated tok/s: the same {direct['prompts']} "
                        f"prompts' calls sent straight to the engines took {direct['wall_s']:.0f} s, the gateway's "
                        f"batch {batch['wall_s']:.0f} s)",
                        share >= 85))  # fmt: skip
    summed = saturation.get("generated_tokens_per_s")
    if summed:
        measured = f"{rate / summed * 100:.0f}% ({rate:.1f} of {summed:.1f} generated tok/s summed over the engines"
        busy = [(e["busy_share"], e["url"]) for e in batch["engines"] if e.get("busy_share") is not None]
        names = {e["url"]: name for name, e in (saturation.get("engines") or {}).items()}
        if busy:
            share, url = max(busy)
            measured += f"; {names.get(url, url)} busy {share * 100:.0f}% of the batch"
        rows.append(row(f"(context) the lineup's use of the engines: batch against their summed saturated rates "
                        f"({mixture})", measured + ")", None))  # fmt: skip
    return rows


def capacity_rows(out: Path) -> list[dict[str, Any]]:
    rows = []
    closed = out / "fake" / "capacity"
    if closed.is_dir():
        clean = [s for s in results(closed) if s["errors"] == 0]
        best = max(clean, key=lambda s: s["requests_per_s"]) if clean else None
        measured = f"{best['requests_per_s']:.0f} req/s at c={best['level']:g}" if best else "every level had errors"
        rows.append(row("capacity >= 100 MoA req/s, zero errors (closed loop)", measured,
                        bool(best and best["requests_per_s"] >= 100)))  # fmt: skip
    opened = out / "fake" / "capacity-open"
    if opened.is_dir():
        for s in results(opened):
            rows.append(row(f"open loop at {s['level']:g} req/s: zero errors",
                            f"{s['requests_per_s']:.0f} req/s served, {s['errors']} errors, "
                            f"e2e p99 {s['e2e_s']['p99'] * 1000:.0f} ms", s["errors"] == 0))  # fmt: skip
    return rows


def batch_job_rows(out: Path) -> list[dict[str, Any]]:
    """The batch benchmark's rows, as `bench/batch_summary.py` judged them."""
    summary = out / "batch" / "summary.json"
    if not summary.is_file():
        return []
    rows: list[dict[str, Any]] = json.loads(summary.read_text())["targets"]
    return rows


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: targets.py OUT_DIR", file=sys.stderr)
        return 2
    out = Path(argv[0])
    if not out.is_dir():
        print(f"targets.py: {out}: no such folder", file=sys.stderr)
        return 1
    rows = overhead_rows(out) + passthrough_rows(out) + batch_rows(out) + batch_job_rows(out) + capacity_rows(out)
    (out / "targets.json").write_text(json.dumps(rows, indent=2) + "\n")
    print("| target | measured | status |\n|---|---|---|")
    for r in rows:
        print(f"| {r['target']} | {r['measured']} | {r['status']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
