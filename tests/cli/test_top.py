"""`moa-local top`: parsing /metrics, PromQL-style quantiles, rates (moa_local.snapshot), the table, and the command
over real loopback HTTP."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest
from click.testing import CliRunner
from prometheus_client import CollectorRegistry, start_http_server
from rich.console import Console

from moa_local.cli import main
from moa_local.cli.top import render_table
from moa_local.metrics import Metrics
from moa_local.snapshot import EndpointRow, parse_snapshot, quantile, summarize
from moa_local.urls import metrics_url
from tests.support.metrics_configs import small_config


@pytest.fixture
def served() -> Iterator[tuple[Metrics, str]]:
    """A Metrics registry exposed at http://127.0.0.1:<free port>/metrics."""
    metrics = Metrics(CollectorRegistry())
    server, thread = start_http_server(0, addr="127.0.0.1", registry=metrics.registry)
    yield metrics, f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def text(metrics: Metrics) -> str:
    return metrics.render()[0].decode()


def test_quantile_interpolates_inside_the_bucket_like_promql() -> None:
    assert quantile(0.5, {0.5: 0.0, 1.0: 10.0, float("inf"): 10.0}) == pytest.approx(0.75)
    assert quantile(0.5, {1.0: 4.0, 2.0: 8.0, float("inf"): 8.0}) == pytest.approx(1.0)
    assert quantile(0.9, {1.0: 5.0, 2.0: 10.0, float("inf"): 10.0}) == pytest.approx(1.8)
    # Past the last finite edge PromQL answers with that edge.
    assert quantile(0.5, {1.0: 0.0, 2.0: 0.0, float("inf"): 3.0}) == 2.0
    assert quantile(0.5, {1.0: 0.0, float("inf"): 0.0}) is None
    assert quantile(0.5, {}) is None


def test_snapshot_sums_roles_per_endpoint() -> None:
    metrics = Metrics()
    metrics.observe_agent("qwen", "proposer", "ok", 1.2, 0.1, 10, 20)
    metrics.observe_agent("qwen", "aggregator", "ok", 0.9, 0.1, 30, 40)
    metrics.observe_agent("qwen", "proposer", "timeout", 120.0)
    metrics.set_endpoint_up("qwen", True)
    metrics.inflight.labels("qwen").inc(3)
    snap = parse_snapshot(text(metrics), at=0.0)
    assert snap.endpoints == ["qwen"]
    assert snap.calls["qwen"] == {"ok": 2.0, "timeout": 1.0}
    assert snap.tokens["qwen"] == {"prompt": 40.0, "completion": 60.0}
    assert snap.buckets["qwen"][1.0] == 1.0 and snap.buckets["qwen"][1.5] == 2.0
    assert snap.buckets["qwen"][float("inf")] == 3.0
    assert snap.inflight["qwen"] == 3.0 and snap.up["qwen"] == 1.0


def test_summary_rates_and_median_over_the_window() -> None:
    metrics = Metrics()
    metrics.preset(small_config(["qwen", "smollm2"], {}))
    metrics.observe_agent("qwen", "proposer", "ok", 30.0, 0.1, 100, 100)  # before the window
    before = parse_snapshot(text(metrics), at=10.0)
    for _ in range(4):
        metrics.observe_agent("qwen", "proposer", "ok", 0.9, 0.1, 50, 25)
    metrics.observe_agent("qwen", "proposer", "error", 0.1)
    after = parse_snapshot(text(metrics), at=12.0)
    rows = {row.endpoint: row for row in summarize(before, after)}
    qwen = rows["qwen"]
    assert qwen.calls_per_s == pytest.approx(2.5)
    assert qwen.prompt_tokens_per_s == pytest.approx(100.0)
    assert qwen.completion_tokens_per_s == pytest.approx(50.0)
    assert qwen.p50_windowed and qwen.p50_s is not None and 0.8 <= qwen.p50_s <= 1.0
    assert qwen.errors == 1
    idle = rows["smollm2"]
    assert idle.calls_per_s == 0 and idle.p50_s is None and idle.errors == 0


def test_summary_without_a_window_shows_the_median_since_start() -> None:
    metrics = Metrics()
    metrics.observe_agent("qwen", "proposer", "ok", 3.0)
    snap = parse_snapshot(text(metrics), at=1.0)
    (row,) = summarize(None, snap)
    assert row.calls_per_s is None and not row.p50_windowed
    assert row.p50_s is not None and 2.5 <= row.p50_s <= 5.0
    (again,) = summarize(snap, parse_snapshot(text(metrics), at=2.0))
    assert again.calls_per_s == 0 and not again.p50_windowed and again.p50_s == row.p50_s


def test_a_restarted_gateway_gives_no_negative_rates() -> None:
    busy = Metrics()
    for _ in range(5):
        busy.observe_agent("qwen", "proposer", "ok", 1.0, None, 10, 10)
    fresh = Metrics()
    fresh.observe_agent("qwen", "proposer", "ok", 1.0, None, 10, 10)
    (row,) = summarize(parse_snapshot(text(busy), at=0.0), parse_snapshot(text(fresh), at=1.0))
    assert row.calls_per_s is None


def test_metrics_url_accepts_base_v1_and_metrics_urls() -> None:
    assert metrics_url("http://127.0.0.1:8080") == "http://127.0.0.1:8080/metrics"
    assert metrics_url("http://127.0.0.1:8080/v1/") == "http://127.0.0.1:8080/metrics"
    assert metrics_url("http://h:1/metrics") == "http://h:1/metrics"


def test_table_shows_health_and_errors() -> None:
    row = EndpointRow("qwen", False, 2, 1.5, 0.75, True, 10.0, 20.0, 3)
    console = Console(width=140, record=True, color_system=None)
    console.print(render_table([row], "t"))
    out = console.export_text()
    assert "qwen" in out and "DOWN" in out and "0.75 s" in out and "1.50" in out and "20.0" in out


def test_once_reads_a_live_metrics_endpoint(served: tuple[Metrics, str]) -> None:
    metrics, url = served
    metrics.set_endpoint_up("qwen", True)
    metrics.set_endpoint_up("smollm2", False)
    metrics.observe_agent("smollm2", "proposer", "error", 0.2)

    def traffic() -> None:  # arrives between top's two reads
        for _ in range(6):
            metrics.observe_agent("qwen", "proposer", "ok", 1.2, 0.2, 40, 16)

    timer = threading.Timer(0.3, traffic)
    timer.start()
    result = CliRunner().invoke(main, ["top", "--url", url, "--once", "--interval", "1.0"], terminal_width=160)
    timer.join()
    assert result.exit_code == 0, result.output
    lines = {line.split()[1]: line for line in result.output.splitlines() if line.startswith("│ ")}
    assert "up" in lines["qwen"] and "1.25 s" in lines["qwen"]  # 6 calls in the (1.0, 1.5] bucket: median 1.25
    assert "DOWN" in lines["smollm2"] and lines["smollm2"].rstrip("│ ").endswith("1")


def test_unreachable_gateway_is_one_line_and_exit_1() -> None:
    with socket.socket() as probe:  # a free port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = CliRunner().invoke(main, ["top", "--url", f"http://127.0.0.1:{port}", "--once", "--timeout", "1"])
    assert result.exit_code == 1
    assert f"cannot read http://127.0.0.1:{port}/metrics" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("url", ["not-a-url", "http://127.0.0.1:port"])
def test_a_malformed_url_is_one_line_and_exit_1(url: str) -> None:
    result = CliRunner().invoke(main, ["top", "--url", url, "--once", "--timeout", "1"])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.exception  # no traceback
    (line,) = result.output.strip().splitlines()
    assert line.startswith(f"Error: cannot read {url}/metrics: ")
