"""`bench/targets.py`'s batch rows on synthetic run folders: the own-mix ceiling and how it is judged."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "targets.py"
FAST, SLOW = "http://127.0.0.1:1/metrics", "http://127.0.0.1:2/metrics"


@pytest.fixture(scope="module")
def targets() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_targets", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up while being defined
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return module


def saturation(rates: dict[str, tuple[str, float]]) -> dict[str, Any]:
    """As bench/saturation.py writes it: per endpoint name, its engine's URL and saturated rate."""
    engines = {name: {"url": url, "generation_tokens_per_s": rate} for name, (url, rate) in rates.items()}
    return {"generated_tokens_per_s": sum(dict(rates.values()).values()), "engines": engines}


def batch(wall_s: float, engines: list[dict[str, Any]]) -> dict[str, Any]:
    """One batch segment as `moa-local bench` writes it; its rate is every engine's tokens over its wall time."""
    tokens = sum(e["generated_tokens"] for e in engines)
    return {"model": "mix", "wall_s": wall_s, "generated_tokens_per_s": tokens / wall_s, "engines": engines}


def engine(url: str, tokens: float, busy: float | None = None) -> dict[str, Any]:
    return {"url": url, "generated_tokens": tokens, "busy_share": busy}


def run_folder(out: Path, segment: dict[str, Any], sat: dict[str, Any], reference: float | None = None) -> Path:
    folder = out / "cpu" / "batch" / "mix"
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps({"segments": [segment]}))
    (out / "cpu" / "saturation-mix.json").write_text(json.dumps(sat))
    if reference is not None:
        (out / "cpu" / "reference-mix.json").write_text(json.dumps({"generated_tokens_per_s": reference}))
    return out


TWO = saturation({"fast": (FAST, 30.0), "slow": (SLOW, 10.0)})


def test_ceiling_is_set_by_the_engine_with_most_work_for_its_speed(targets: ModuleType) -> None:
    # fast: 1200 tokens / 30 tok/s = 40 s; slow: 800 / 10 = 80 s -> 2000 tokens in 80 s at best
    mix = targets.own_mix_ceiling(batch(90.0, [engine(FAST, 1200), engine(SLOW, 800)]), TWO)
    assert (mix.name, mix.url, mix.tokens, mix.rate) == ("slow", SLOW, 800, 10.0)
    assert mix.seconds == pytest.approx(80.0) and mix.tokens_per_s == pytest.approx(25.0)
    # the other way round: fast has 2700 / 30 = 90 s, slow 300 / 10 = 30 s -> 3000 tokens in 90 s
    mix = targets.own_mix_ceiling(batch(90.0, [engine(FAST, 2700), engine(SLOW, 300)]), TWO)
    assert mix.name == "fast" and mix.tokens_per_s == pytest.approx(3000 / 90)
    # a split matching the speeds (3:1) can reach the summed rate
    mix = targets.own_mix_ceiling(batch(90.0, [engine(FAST, 1500), engine(SLOW, 500)]), TWO)
    assert mix.tokens_per_s == pytest.approx(40.0)


def test_endpoints_sharing_an_engine_count_it_once(targets: ModuleType) -> None:
    shared = saturation({"a": (FAST, 30.0), "b": (FAST, 30.0), "slow": (SLOW, 10.0)})
    mix = targets.own_mix_ceiling(batch(90.0, [engine(FAST, 2700), engine(SLOW, 300)]), shared)
    assert mix.name == "a+b" and mix.tokens_per_s == pytest.approx(3000 / 90)


def test_no_ceiling_without_per_engine_figures(targets: ModuleType) -> None:
    assert targets.own_mix_ceiling(batch(90.0, [engine(FAST, 1200)]), TWO) is None  # slow engine not watched
    assert targets.own_mix_ceiling(batch(90.0, [engine(FAST, 1200), engine(SLOW, 800)]), {"engines": []}) is None
    unmeasured = saturation({"fast": (FAST, 30.0), "slow": (SLOW, 0.0)})
    assert targets.own_mix_ceiling(batch(90.0, [engine(FAST, 1200), engine(SLOW, 800)]), unmeasured) is None


@pytest.mark.parametrize(
    ("wall_s", "share", "status"),
    [(90.0, "89%", "met"), (100.0, "80%", "missed")],  # the least time is 80 s: 80 / 90 and 80 / 100
)
def test_batch_is_judged_against_its_own_mix_ceiling(
    targets: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str], wall_s: float, share: str, status: str
) -> None:
    segment = batch(wall_s, [engine(FAST, 1200, busy=0.6), engine(SLOW, 800, busy=0.97)])
    out = run_folder(tmp_path, segment, TWO, reference=6.0)
    assert targets.main([str(out)]) == 0
    rows = json.loads((out / "targets.json").read_text())
    assert [r["target"] for r in rows] == [
        "batch >= 85% of the engines' saturated throughput for its own work (mix)",
        "(context) the lineup's use of the engines: batch against their summed saturated rates (mix)",
        "batch >= 3x the one-at-a-time reference pattern (mix)",
    ]
    judged, context, reference = rows
    rate = 2000 / wall_s
    assert judged["status"] == status
    assert judged["measured"] == (
        f"{share} ({rate:.1f} of 25.0 generated tok/s; bound by slow: 800 tokens at 10.0 tok/s = 80 s of the "
        f"batch's {wall_s:.0f} s)"
    )
    assert context["status"] == "n/a"
    assert context["measured"] == (
        f"{rate / 40 * 100:.0f}% ({rate:.1f} of 40.0 generated tok/s summed over the engines; "
        "slow busy 97% of the batch)"
    )
    assert reference["status"] == "met" and reference["measured"].startswith(f"{rate / 6:.1f}x")
    printed = capsys.readouterr().out
    assert f"| {judged['target']} | {judged['measured']} | {status} |" in printed


def test_batch_row_without_engine_figures_is_not_judged(targets: ModuleType, tmp_path: Path) -> None:
    out = run_folder(tmp_path, batch(90.0, [engine(FAST, 1200)]), TWO)
    rows = targets.batch_rows(out)
    assert rows[0]["status"] == "n/a" and rows[0]["measured"].startswith("unknown")
    assert rows[1]["measured"] == "33% (13.3 of 40.0 generated tok/s summed over the engines)"  # no busy share
