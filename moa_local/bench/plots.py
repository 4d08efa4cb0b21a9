"""PNG plots of a benchmark run: throughput, latency and overhead against load.

One line per model, so a mixture and the single models it is made of sit
on the same axes. Closed-loop segments are plotted against concurrency,
open-loop ones against the arrival rate (file names end in `-open`).
matplotlib is an optional extra (`pip install 'moa-local[bench]'`): without
it no plot is drawn and the report says so.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from moa_local.bench.stats import Summary

if TYPE_CHECKING:
    from moa_local.bench.result import BenchResult

Getter = Callable[[Summary], float | None]


def write_plots(result: BenchResult, out: Path) -> tuple[list[Path], str | None]:
    """The plot files written, and a note when none could be."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return [], "plots skipped: matplotlib is not installed (pip install 'moa-local[bench]')"
    written: list[Path] = []
    for mode, suffix, axis in (("closed", "", "concurrency (requests in flight)"),
                               ("open", "-open", "arrival rate (requests/s)")):  # fmt: skip
        summaries = [s.summary for s in result.segments if s.summary.mode == mode]
        if not summaries:
            continue
        panels: list[tuple[str, list[tuple[str, Getter]]]] = [
            ("requests/s", [("", lambda s: s.requests_per_s)]),
            ("answer tokens/s", [("", lambda s: s.output_tokens_per_s)]),
        ]
        written.append(_figure(plt, summaries, panels, axis, out / f"throughput{suffix}.png", "Throughput"))
        panels = [
            ("time to first token (s)", [("p50", lambda s: s.ttft_s.p50), ("p99", lambda s: s.ttft_s.p99)]),
            ("end-to-end latency (s)", [("p50", lambda s: s.e2e_s.p50), ("p99", lambda s: s.e2e_s.p99)]),
        ]
        written.append(_figure(plt, summaries, panels, axis, out / f"latency{suffix}.png", "Latency"))
        traced = [s for s in summaries if s.overhead_s.count and s.model in _mixtures(summaries)]
        if traced:
            panels = [("orchestration overhead (ms)", [("p50", lambda s: _ms(s.overhead_s.p50)),
                                                       ("p99", lambda s: _ms(s.overhead_s.p99))])]  # fmt: skip
            written.append(_figure(plt, traced, panels, axis, out / f"overhead{suffix}.png", "Gateway overhead"))
    return written, None


def _mixtures(summaries: list[Summary]) -> set[str]:
    """Models whose requests went through proposer layers (their trace has a positive overhead)."""
    return {s.model for s in summaries if (s.overhead_s.p99 or 0) > 0}


def _ms(value: float | None) -> float | None:
    return None if value is None else value * 1000


def _figure(
    plt: Any, summaries: list[Summary], panels: list[tuple[str, list[tuple[str, Getter]]]],
    axis: str, path: Path, title: str,
) -> Path:  # fmt: skip
    figure, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    models = list(dict.fromkeys(s.model for s in summaries))
    for ax, (ylabel, series) in zip(axes[0], panels, strict=True):
        for number, model in enumerate(models):
            mine = sorted((s for s in summaries if s.model == model), key=lambda s: s.level)
            for style, (name, get) in zip(("-o", "--x"), series, strict=False):
                points = [(s.level, get(s)) for s in mine if get(s) is not None]
                if points:
                    label = f"{model} {name}".strip()
                    ax.plot([p[0] for p in points], [p[1] for p in points], style, color=f"C{number}", label=label)
        levels = sorted({s.level for s in summaries})
        if len(levels) > 1 and levels[-1] / levels[0] >= 8:
            ax.set_xscale("log", base=2)
        ax.set_xticks(levels, [f"{level:g}" for level in levels])
        ax.set_xlabel(axis)
        ax.set_ylabel(ylabel)
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
