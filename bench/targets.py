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
  (noisier: runs minutes apart), and answer tokens/s at concurrency 16;
- batch: `cpu/batch/<mixture>` generated tokens/s (every call's tokens),
  judged against the ceiling for its own work: each engine's share of the
  batch's generated tokens, at that engine's saturated rate for the
  mixture's calls (`cpu/saturation-<mixture>.json`). The engine with the
  most work for its speed (tokens / rate largest) needs the longest, which
  is the least time the batch can take; the ceiling is all the tokens over
  that time, so the share is that time over the batch's wall time. Also
  against the reference pattern (`cpu/reference-<mixture>.json`). For
  context, the batch against the engines' summed saturated rates: the
  lineup's use of the engines, not a target. A mixture fixes how its work
  splits between engines (which agents run where, their max_tokens, the
  aggregator), so the sum is reachable only when that split matches the
  engines' speeds; otherwise the faster engine runs out of work while the
  slower one is still generating, and no scheduler can close the gap short
  of moving work between engines, which changes the mixture. The judged
  row names the engine that bounds the ceiling; the context row adds its
  busy share during the batch (the share of the gauge samples in which it
  had a request running);
- capacity: the best closed-loop MoA requests/s with zero errors in
  `fake/capacity`, and the open-loop rates served with zero errors.

    python bench/targets.py bench-out/20261121-070000
"""

from __future__ import annotations

import json
import statistics
import sys
from dataclasses import dataclass
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
        rate = {}
        for side in ("direct", "gateway"):
            runs = [results(f)[0] for f in sorted(folder.glob(f"{name}-*-{side}-throughput"))]
            rate[side] = statistics.mean(s["output_tokens_per_s"] for s in runs)
        share = rate["gateway"] / rate["direct"] * 100
        measured = f"{share:.1f}% ({rate['direct']:.1f} -> {rate['gateway']:.1f} tok/s)"
        rows.append(row(f"pass-through >= 97% of direct throughput ({name}, c=16)", measured, share >= 97))
    return rows


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
    """The judged row (against the batch's own-mix ceiling) and the context row (against the summed rates)."""
    rate, rows = batch["generated_tokens_per_s"], []
    target = f"batch >= 85% of the engines' saturated throughput for its own work ({mixture})"
    mix = own_mix_ceiling(batch, saturation)
    if mix is None:
        rows.append(row(target, "unknown: no per-engine generated tokens or saturated rates", None))
    else:
        share = rate / mix.tokens_per_s * 100
        rows.append(row(target,
                        f"{share:.0f}% ({rate:.1f} of {mix.tokens_per_s:.1f} generated tok/s; bound by {mix.name}: "
                        f"{mix.tokens:.0f} tokens at {mix.rate:.1f} tok/s = {mix.seconds:.0f} s of the batch's "
                        f"{batch['wall_s']:.0f} s)",
                        share >= 85))  # fmt: skip
    summed = saturation.get("generated_tokens_per_s")
    if summed:
        measured = f"{rate / summed * 100:.0f}% ({rate:.1f} of {summed:.1f} generated tok/s summed over the engines"
        busy = next((e.get("busy_share") for e in batch["engines"] if mix and e["url"] == mix.url), None)
        measured += f"; {mix.name} busy {busy * 100:.0f}% of the batch)" if mix and busy is not None else ")"
        rows.append(row(f"(context) the lineup's use of the engines: batch against their summed saturated rates "
                        f"({mixture})", measured, None))  # fmt: skip
    return rows


@dataclass(frozen=True)
class Ceiling:
    tokens_per_s: float  # the whole batch's generated tokens over the least time it can take
    name: str  # the engine that sets that time (its endpoint names)
    url: str
    tokens: float  # that engine's generated tokens in the batch
    rate: float  # its saturated generation rate
    seconds: float  # tokens / rate: the least time the batch can take


def own_mix_ceiling(batch: dict[str, Any], saturation: dict[str, Any]) -> Ceiling | None:
    """The fastest a batch with this split of tokens between the engines can go: the engine with the most
    work, relative to its saturated rate, sets the time (the others idle part of it)."""
    engines = saturation.get("engines")
    if not isinstance(engines, dict) or not engines:
        return None
    rates: dict[str, float] = {}
    names: dict[str, list[str]] = {}
    for name, engine in engines.items():  # several endpoints may share one engine
        rates[engine["url"]] = engine["generation_tokens_per_s"]
        names.setdefault(engine["url"], []).append(name)
    tokens = {e["url"]: e["generated_tokens"] for e in batch["engines"]}
    if any(tokens.get(url) is None or not rate for url, rate in rates.items()):
        return None
    url = max(rates, key=lambda u: tokens[u] / rates[u])
    seconds = tokens[url] / rates[url]
    if seconds <= 0:
        return None
    total = sum(tokens[u] for u in rates)
    return Ceiling(total / seconds, "+".join(names[url]), url, tokens[url], rates[url], seconds)


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


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: targets.py OUT_DIR", file=sys.stderr)
        return 2
    out = Path(argv[0])
    if not out.is_dir():
        print(f"targets.py: {out}: no such folder", file=sys.stderr)
        return 1
    rows = overhead_rows(out) + passthrough_rows(out) + batch_rows(out) + capacity_rows(out)
    (out / "targets.json").write_text(json.dumps(rows, indent=2) + "\n")
    print("| target | measured | status |\n|---|---|---|")
    for r in rows:
        print(f"| {r['target']} | {r['measured']} | {r['status']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
