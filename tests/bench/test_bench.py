"""`moa-local bench` over real loopback HTTP: a gateway in front of fake engines.

Short runs: they check that every output file is written with sane numbers,
that a failing engine yields error records while the run goes on, the open
loop, the engine-side figures, and that plots skip cleanly without matplotlib.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from moa_local.bench.client import Target, send
from moa_local.bench.engines import EngineWatch, occupancy, parse
from moa_local.bench.plots import write_plots
from moa_local.bench.result import BenchPlan, BenchResult, Segment
from moa_local.bench.runner import parse_levels
from moa_local.bench.stats import RequestRecord, summarize
from moa_local.cli import main
from moa_local.errors import BenchError
from moa_local.urls import metrics_url
from tests.support.fake_fixtures import FakeEngineFactory, ServerThread
from tests.support.gateway_fixtures import GatewayFactory, GatewayServer, fake_config, mixture


def bench(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["bench", "--quiet", *args])
    return result.exit_code, result.output


def results(out: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((out / "results.json").read_text())
    return data


def segment(data: dict[str, Any], model: str, level: float) -> dict[str, Any]:
    found = [s for s in data["segments"] if s["model"] == model and s["level"] == level]
    assert len(found) == 1, data["segments"]
    return found[0]


@pytest.fixture
def stack(fake_engine: FakeEngineFactory, gateway_server: GatewayFactory) -> tuple[GatewayServer, Any, Any]:
    """A gateway with mixture `mix` (proposers a and b, aggregator b) and both endpoints as models."""
    a = fake_engine(model="a", tokens=6, token_delay_ms=1)
    b = fake_engine(model="b", tokens=6, token_delay_ms=1)
    config = fake_config({"a": a, "b": b}, {"mix": mixture(["a", "b"], "b", min_ok=2)})
    return gateway_server(config, probe=False), a, b


def test_bench_run_writes_every_file_with_sane_numbers(stack: tuple[GatewayServer, Any, Any], tmp_path: Path) -> None:
    gateway, a, _ = stack
    out = tmp_path / "run"
    code, output = bench("--url", gateway.url, "--model", "mix", "--model", "a", "--concurrency", "1,4", "--requests",
                         "8", "--max-tokens", "8", "--out", str(out), "--engine-metrics", a.url,
                         "--cpu-pid", f"gateway={os.getpid()}")  # fmt: skip
    assert code == 0, output
    assert "4 segment(s), 0 failed request(s)" in output
    data = results(out)
    assert data["plan"]["models"] == ["mix", "a"] and "api_key" not in data["plan"]
    assert data["machine"]["cpus"] >= 1
    for model in ("mix", "a"):
        for level in (1.0, 4.0):
            s = segment(data, model, level)
            assert (s["requests"], s["ok"], s["errors"]) == (8, 8, 0)
            assert s["requests_per_s"] > 0 and s["output_tokens_per_s"] > 0
            assert 0 < s["ttft_s"]["p50"] <= s["e2e_s"]["p50"] <= s["e2e_s"]["p99"]
            assert s["itl_s"]["count"] > 0
            assert s["overhead_s"]["count"] == 8 and s["overhead_s"]["p50"] >= 0
            assert s["added_ttft_s"]["count"] == 8 and 0 <= s["added_ttft_s"]["p50"] < s["ttft_s"]["p50"]
            engine = s["engines"][0]
            assert engine["url"] == f"{a.url}/metrics" and engine["generated_tokens"] > 0
            cpu = {row["process"]: row for row in s["cpu"]}
            assert set(cpu) == {"load generator", "gateway"}  # the gateway runs in this process, in a thread
            assert cpu["gateway"]["cpu_ms_per_request"] > 0
    mix = segment(data, "mix", 1.0)
    # the mixture generates three answers' worth of tokens per answer (two proposals + aggregation)
    assert mix["generated_tokens_per_s"] == pytest.approx(3 * mix["output_tokens_per_s"], rel=0.01)
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert len(records) == 32 and all(r["ok"] for r in records)
    assert all(r["critical_path_s"] > 0 and len(r["layer_s"]) == 1 for r in records if r["model"] == "mix")
    summary = (out / "summary.md").read_text()
    assert "| mix | c=4 | 8 | 0 |" in summary and "Engine-side figures" in summary and "| gateway |" in summary
    assert "| peak waiting | busy | mean running |" in summary
    plots = ["throughput.png", "latency.png", "overhead.png"]
    if "matplotlib" in sys.modules or _has_matplotlib():
        assert all((out / name).stat().st_size > 1000 for name in plots)
        assert all(f"![{name}]({name})" in summary for name in plots)


def test_fault_one_engine_failing_yields_error_records_and_the_run_goes_on(
    stack: tuple[GatewayServer, Any, Any], tmp_path: Path
) -> None:
    gateway, _, b = stack
    b.set(status=500, times=3)  # b's next three calls fail, then it recovers
    out = tmp_path / "run"
    code, output = bench("--url", gateway.url, "--model", "mix", "--model", "b", "--model", "a",
                         "--concurrency", "1", "--requests", "6", "--max-tokens", "8", "--out", str(out))  # fmt: skip
    assert code == 0, output
    data = results(out)
    mix = segment(data, "mix", 1.0)
    assert mix["errors"] >= 1 and mix["ok"] >= 1 and mix["ok"] + mix["errors"] == 6
    assert set(mix["error_kinds"]) <= {"http 502", "http 503"}
    b.set(status=500, times=None)  # now b is down for good; the endpoint alone fails every request
    out2 = tmp_path / "run2"
    code, output = bench("--url", gateway.url, "--model", "b", "--model", "a", "--concurrency", "2",
                         "--requests", "4", "--max-tokens", "8", "--out", str(out2))  # fmt: skip
    assert code == 0, output
    assert "4 failed request(s)" in output
    data = results(out2)
    assert segment(data, "b", 2.0)["errors"] == 4 and segment(data, "b", 2.0)["error_kinds"] == {"http 502": 4}
    assert segment(data, "a", 2.0)["ok"] == 4
    records = [json.loads(line) for line in (out2 / "records.jsonl").read_text().splitlines()]
    assert all("engine answered 500" in r["error"] for r in records if r["model"] == "b")
    assert "- b c=2: 4 x http 502" in (out2 / "summary.md").read_text()


def test_fault_unreachable_url_is_one_line_not_a_traceback(fake_engine: FakeEngineFactory, tmp_path: Path) -> None:
    a = fake_engine(model="a", tokens=4)
    a.stop()
    code, output = bench("--url", a.url, "--model", "a", "--requests", "2", "--out", str(tmp_path / "x"),
                         "--no-trace")  # fmt: skip
    assert code == 1
    assert output.startswith("Error: cannot reach") and "Traceback" not in output


def test_open_loop_sends_poisson_arrivals_and_a_bare_engine_needs_no_trace(
    fake_engine: FakeEngineFactory, tmp_path: Path
) -> None:
    a = fake_engine(model="a", tokens=4)
    out = tmp_path / "run"
    code, output = bench("--url", a.base_url, "--model", "a", "--rate", "200", "--requests", "12",
                         "--out", str(out), "--no-trace")  # fmt: skip
    assert code == 0, output
    data = results(out)
    assert [(s["mode"], s["level"]) for s in data["segments"]] == [("open", 200.0)]
    s = data["segments"][0]
    assert s["ok"] == 12 and s["overhead_s"]["count"] == 0
    bodies = a.chat_bodies()
    assert all("moa" not in body and body["stream"] for body in bodies)
    if _has_matplotlib():
        assert (out / "throughput-open.png").is_file()


def test_duration_limit_stops_new_requests(fake_engine: FakeEngineFactory, tmp_path: Path) -> None:
    a = fake_engine(model="a", tokens=2, latency_ms=150)
    out = tmp_path / "run"
    code, output = bench("--url", a.url, "--model", "a", "--concurrency", "1", "--requests", "50",
                         "--duration-limit", "0.4", "--out", str(out), "--no-trace")  # fmt: skip
    assert code == 0, output
    data = results(out)
    # At least the first request ran; each takes >= 150 ms, so no more than 4 can start within 0.4 s
    # (however slow the machine: a lower bound above 1 would depend on its speed).
    assert 1 <= data["segments"][0]["requests"] <= 4
    assert any("duration limit" in note for note in data["notes"])


def test_user_errors_are_one_line(fake_engine: FakeEngineFactory, tmp_path: Path) -> None:
    a = fake_engine(model="a")
    code, output = bench("--url", a.url, "--model", "nope", "--out", str(tmp_path / "x"), "--no-trace")
    assert code == 1 and "model 'nope' is not served" in output and "a" in output
    code, output = bench("--url", a.url, "--model", "a", "--concurrency", "1,x", "--out", str(tmp_path / "x"))
    assert code == 1 and "--concurrency" in output
    code, output = bench("--url", a.url, "--model", "a", "--cpu-pid", "gw=x", "--out", str(tmp_path / "x"))
    assert code == 1 and "--cpu-pid" in output
    code, output = bench("--url", a.url, "--model", "a", "--dataset", str(tmp_path / "none.jsonl"),
                         "--out", str(tmp_path / "x"))  # fmt: skip
    assert code == 1 and "dataset" in output


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b'data: {"choices": 5}\n\ndata: [DONE]\n\n', "bad stream: unexpected event shape"),
        (b"data: not json\n\n", "bad stream"),
        (b'data: {"choices": [{"delta": {"content": "hi"}}]}\n\n', "stream ended without [DONE]"),
        (b'data: {"error": {"message": "engine fell over"}}\n\ndata: [DONE]\n\n', "error event: engine fell over"),
    ],
)
async def test_fault_a_malformed_stream_is_an_error_record(body: bytes, error: str) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        await send({"type": "http.response.body", "body": body})

    server = ServerThread(app).start()
    try:
        async with httpx.AsyncClient() as client:
            target = Target(f"http://127.0.0.1:{server.port}", "m", 8, trace=False)
            record = await send(
                client, target, [{"role": "user", "content": "x"}], RequestRecord("m", "closed", 1, 0), 0
            )
    finally:
        server.stop()
    assert not record.ok and record.error is not None and record.error.startswith(error)


def test_parse_levels() -> None:
    assert parse_levels("1, 4,16", int, "--concurrency") == (1, 4, 16)
    assert parse_levels("0.5", float, "--rate") == (0.5,)
    for bad in ("", "0", "-1", "a", "inf"):
        with pytest.raises(BenchError):
            parse_levels(bad, float, "--rate")


def test_engine_metrics_parse_vllm_names_and_urls() -> None:
    text = (
        "# TYPE vllm:generation_tokens counter\n"
        'vllm:generation_tokens_total{model_name="q"} 120\n'
        'vllm:generation_tokens_total{model_name="r"} 30\n'
        "# TYPE vllm:gpu_cache_usage_perc gauge\n"
        'vllm:gpu_cache_usage_perc{model_name="q"} 0.25\n'
        "# TYPE vllm:prefix_cache_hits counter\n"
        'vllm:prefix_cache_hits_total{model_name="q"} 5\n'
    )
    assert parse(text) == {"generation_tokens": 150.0, "kv_cache_usage": 0.25, "prefix_hits": 5.0}
    assert metrics_url("http://h:1/v1") == "http://h:1/metrics"
    assert metrics_url("http://h:1/") == "http://h:1/metrics"
    assert metrics_url("http://h:1/metrics") == "http://h:1/metrics"


def test_occupancy_is_the_share_of_samples_with_a_request_running_and_their_mean() -> None:
    assert occupancy([0.0, 2.0, 3.0, 0.0, 1.0]) == {"busy_share": 0.6, "mean_running": 1.2}
    assert occupancy([4.0, 4.0]) == {"busy_share": 1.0, "mean_running": 4.0}
    assert occupancy([]) == {"busy_share": None, "mean_running": None}


async def test_engine_watch_samples_how_busy_each_engine_was(fake_engine: FakeEngineFactory) -> None:
    slow, idle = fake_engine(model="a", hang=True), fake_engine(model="b")
    async with EngineWatch((slow.url, idle.url), interval_s=0.02) as watch, httpx.AsyncClient() as client:
        busy_engine, quiet_engine = watch.engines

        async def samples(count: int, running: float) -> None:  # wait for them, however slow the machine
            for _ in range(3000):  # 30 s at most
                if busy_engine.running.count(running) >= count and len(quiet_engine.running) >= 2 * count:
                    return
                await asyncio.sleep(0.01)
            raise AssertionError(f"fewer than {count} samples of running={running} after 30 s")

        body = {"model": "a", "messages": [{"role": "user", "content": "x"}], "max_tokens": 4}
        request = asyncio.create_task(client.post(f"{slow.base_url}/chat/completions", json=body, timeout=60))
        await samples(10, 1.0)  # the request hangs: running is 1 until it goes
        request.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await request
        await samples(10, 0.0)  # as many samples idle as busy: about half see the request
    busy, quiet = watch.figures()
    assert busy["gauge_samples"] >= 10 and quiet["gauge_samples"] >= 10
    assert 0.2 < busy["busy_share"] < 0.8 and busy["peak_running"] == 1
    assert busy["mean_running"] == pytest.approx(busy["busy_share"])  # one request at most: running is 0 or 1
    assert (quiet["busy_share"], quiet["mean_running"]) == (0.0, 0.0)


async def test_engine_watch_without_samples_has_no_busy_share(fake_engine: FakeEngineFactory) -> None:
    a = fake_engine(model="a")
    async with EngineWatch((a.url,), interval_s=60) as watch:
        pass
    figures = watch.figures()[0]
    assert (figures["busy_share"], figures["mean_running"], figures["gauge_samples"]) == (None, None, 0)


def test_plots_skip_cleanly_without_matplotlib(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    records = [RequestRecord("a", "closed", 1.0, 0, ok=True, e2e_s=1.0, completion_tokens=3)]
    result = BenchResult(BenchPlan("http://x", ("a",), tmp_path), "now", [Segment(summarize(records), [], records)])
    written, note = write_plots(result, tmp_path)
    assert written == [] and note is not None and "matplotlib is not installed" in note


def _has_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _script(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(
        f"bench_{name}", Path(__file__).resolve().parents[2] / "bench" / f"{name}.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["saturation", "reference_moa"])
def test_batch_scripts_name_a_bad_mixture_or_config_in_one_line(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "x.yaml"
    config.write_text(
        'endpoints:\n  a: {base_url: "http://127.0.0.1:9/v1", model: a}\n'
        "mixtures:\n  moa:\n    layers:\n      - agents: [{endpoint: a}]\n    aggregator: {endpoint: a}\n",
        encoding="utf-8",
    )
    out = str(tmp_path / "out.json")
    main = _script(name).main
    assert main(["--config", str(config), "--mixture", "nope", "--out", out]) == 1
    assert capsys.readouterr().err == f"{name}.py: {config}: no mixture 'nope' (known: moa)\n"
    assert main(["--config", str(tmp_path / "missing.yaml"), "--mixture", "moa", "--out", out]) == 1
    assert capsys.readouterr().err == f"{name}.py: {tmp_path / 'missing.yaml'}: file not found\n"
    assert not (tmp_path / "out.json").exists()


def test_saturation_load_over_fake_engines_never_replays_a_prompt(fake_engine: FakeEngineFactory) -> None:
    """Fake engines (instant, counting tokens): the saturation load's calls that carry references are all
    different, across workers and rounds, so the engines' prefix cache cannot skip a prefill a real batch pays."""
    saturation = _script("saturation")
    a = fake_engine(model="a", tokens=4)
    b = fake_engine(model="b", tokens=4)
    config = fake_config({"a": a, "b": b}, {"moa": mixture([{"endpoint": "a", "max_tokens": 4, "n": 2}], "b")})
    conversations = [[{"role": "user", "content": "hello"}], [{"role": "user", "content": "why?"}]]
    work = saturation.rounds(config, config.mixtures["moa"], conversations, 4)
    result = asyncio.run(saturation.load(config, work, 4, warmup_s=0.3, window_s=0.5))
    aggregations = [json.dumps(body["messages"]) for body in b.chat_bodies() if body]  # cut-off ones have none
    assert len(aggregations) > 3 * len(conversations)  # several rounds went out
    assert len(set(aggregations)) == len(aggregations)
    proposals = [json.dumps(body["messages"]) for body in a.chat_bodies() if body]
    assert set(proposals) == {json.dumps(c) for c in conversations}  # the questions repeat, as in a real batch
    for name in ("a", "b"):
        engine = result["engines"][name]
        assert engine["generation_tokens_per_s"] > 0 and engine["prefix_cache_hit_rate"] == 0.0


def test_saturation_direct_batch_over_fake_engines_sends_each_call_once_and_counts_the_engines_tokens(
    fake_engine: FakeEngineFactory,
) -> None:
    """Fake engines (4 tokens per answer, per sample): the batch's own calls, straight to the engines."""
    saturation = _script("saturation")
    a = fake_engine(model="a", reply="one two three four", token_delay_ms=1)
    b = fake_engine(model="b", reply="one two three four", token_delay_ms=1)
    proposer = {"endpoint": "a", "max_tokens": 4, "n": 2}
    config = fake_config({"a": a, "b": b}, {"moa": mixture([proposer, "a"], "b")}, max_concurrency=2)
    conversations = [[{"role": "user", "content": f"question {i}"}] for i in range(5)]
    work = saturation.calls(config, config.mixtures["moa"], conversations, 4)
    result = asyncio.run(saturation.direct_batch(config, work))
    assert result["calls"] == {"a": 10, "b": 5} and result["errors"] == 0
    assert len(a.chat_bodies()) == 10 and len(b.chat_bodies()) == 5
    assert result["engines"]["a"]["generated_tokens"] == 5 * (2 + 1) * 4  # every sample of the n=2 calls
    assert result["engines"]["b"]["generated_tokens"] == 5 * 4
    assert result["generated_tokens_per_s"] == pytest.approx(80 / result["wall_s"])
