"""`bench/targets.py`'s batch rows on synthetic run folders: the direct-batch ceiling and how it is judged."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "targets.py"
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


def saturation(rates: dict[str, tuple[str, float]], direct: tuple[float, float] | None = None) -> dict[str, Any]:
    """As bench/saturation.py writes it: per endpoint name, its engine's URL and saturated rate; with `direct`
    (wall time, generated tok/s), the batch of 24 prompts sent straight to the engines."""
    engines = {name: {"url": url, "generation_tokens_per_s": rate} for name, (url, rate) in rates.items()}
    result = {"generated_tokens_per_s": sum(dict(rates.values()).values()), "engines": engines}
    if direct is not None:
        result["direct_batch"] = {"prompts": 24, "wall_s": direct[0], "generated_tokens_per_s": direct[1]}
    return result


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


TWO = saturation({"fast": (FAST, 30.0), "slow": (SLOW, 10.0)}, direct=(80.0, 25.0))


@pytest.mark.parametrize(
    ("wall_s", "share", "status"),
    [(90.0, "89%", "met"), (100.0, "80%", "missed")],  # 2000 tokens sent straight: 80 s, i.e. 80 / 90 and 80 / 100
)
def test_batch_is_judged_against_the_same_calls_sent_straight_to_the_engines(
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
        f"{share} ({rate:.1f} of 25.0 generated tok/s: the same 24 prompts' calls sent straight to the engines "
        f"took 80 s, the gateway's batch {wall_s:.0f} s)"
    )
    assert context["status"] == "n/a"
    assert context["measured"] == (
        f"{rate / 40 * 100:.0f}% ({rate:.1f} of 40.0 generated tok/s summed over the engines; "
        "slow busy 97% of the batch)"
    )
    assert reference["status"] == "met" and reference["measured"].startswith(f"{rate / 6:.1f}x")
    printed = capsys.readouterr().out
    assert f"| {judged['target']} | {judged['measured']} | {status} |" in printed


def test_batch_row_without_a_direct_batch_is_not_judged(targets: ModuleType, tmp_path: Path) -> None:
    no_direct = saturation({"fast": (FAST, 30.0), "slow": (SLOW, 10.0)})
    out = run_folder(tmp_path, batch(90.0, [engine(FAST, 1200)]), no_direct)
    rows = targets.batch_rows(out)
    assert rows[0]["status"] == "n/a" and rows[0]["measured"].startswith("unknown")
    assert rows[1]["measured"] == "33% (13.3 of 40.0 generated tok/s summed over the engines)"  # no busy share


def test_gateway_core_share_is_its_cpu_time_over_the_runs_wall_time(targets: ModuleType) -> None:
    def run(wall_s: float, gateway_cpu_s: float) -> dict[str, Any]:
        return {"wall_s": wall_s, "cpu": [{"process": "load generator", "cpu_s": 9.0},
                                          {"process": "gateway", "cpu_s": gateway_cpu_s}]}  # fmt: skip

    assert targets.gateway_core_share([run(30.0, 0.3), run(10.0, 0.5)]) == pytest.approx(0.02)
    assert targets.gateway_core_share([run(30.0, 0.3), {"wall_s": 10.0}]) is None  # one run without the figure
    assert targets.gateway_core_share([]) is None
