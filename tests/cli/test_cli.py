"""The `moa-local` command (`ask`, `check`, and the probes under `check`) against fake engines on loopback.

The main paths run the installed console script as its own process, as a
user would (so a traceback would show); the rest go through click's runner
in this process, which is faster and re-raises anything unhandled.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml
from click.testing import CliRunner

from moa_local.cli import main
from moa_local.config import load_config
from moa_local.engines.prober import probe_endpoints
from moa_local.errors import MoaError
from moa_local.mixture.references import DEFAULT_REFERENCE_PROMPT
from moa_local.testing.payload import prompt_words

if TYPE_CHECKING:
    from tests.support.fake_fixtures import FakeEngineFactory, FakeServer

_SCRIPT = shutil.which("moa-local", path=str(Path(sys.executable).parent))
COMMAND = [_SCRIPT] if _SCRIPT else [sys.executable, "-m", "moa_local"]


@dataclass(frozen=True)
class Ran:
    returncode: int
    stdout: str
    stderr: str


def moa_local(*args: str | Path, timeout_s: float = 60) -> Ran:
    """The installed console command in its own process: what a user runs, traceback and all."""
    done = subprocess.run(
        [*COMMAND, *map(str, args)], capture_output=True, text=True, timeout=timeout_s, check=False,
        env={**os.environ, "NO_COLOR": "1", "COLUMNS": "100"},
    )  # fmt: skip
    return Ran(done.returncode, done.stdout, done.stderr)


def invoke(*args: str | Path) -> Ran:
    """The same command in this process (faster; a process start costs seconds on a small machine)."""
    result = CliRunner().invoke(main, [str(arg) for arg in args], env={"NO_COLOR": "1", "COLUMNS": "100"})
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception  # would have been a traceback
    return Ran(result.exit_code, result.stdout, result.stderr)


def write_config(
    tmp_path: Path, servers: dict[str, FakeServer | str], layers: list[list[str]], *, min_ok: int = 1,
    aggregator: str = "agg", endpoint_settings: dict[str, Any] | None = None,
) -> Path:  # fmt: skip
    """One endpoint per server (its model named like the endpoint) and one mixture 'moa'."""
    endpoints = {
        name: {
            "base_url": server if isinstance(server, str) else server.base_url,
            "model": name,
            "timeout_s": 10,
            "max_retries": 1,
            **(endpoint_settings or {}),
        }
        for name, server in servers.items()
    }
    mixture = {
        "layers": [
            {"agents": [{"endpoint": e, "max_tokens": 64} for e in agents], "min_ok": min_ok} for agents in layers
        ],
        "aggregator": {"endpoint": aggregator, "max_tokens": 128},
    }
    path = tmp_path / "moa.yaml"
    path.write_text(yaml.safe_dump({"endpoints": endpoints, "mixtures": {"moa": mixture}}), encoding="utf-8")
    return path


def one_error_line(result: Ran) -> str:
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    return lines[0].removeprefix("Error: ")


def system_of(body: dict[str, Any]) -> str:
    first = body["messages"][0]
    assert first["role"] == "system"
    return str(first["content"])


def test_fault_ask_prints_the_synthesized_answer(tmp_path: Path, fake_engine: FakeEngineFactory) -> None:
    servers = {"a": fake_engine(model="a"), "b": fake_engine(model="b"), "agg": fake_engine(model="agg")}
    servers["agg"].set(reply="Four, as both answers say.")
    result = moa_local("ask", "--config", write_config(tmp_path, servers, [["a", "b"]]), "What is 2 + 2?")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "Four, as both answers say.\n"
    assert result.stderr == ""
    for name in ("a", "b"):
        assert servers[name].chat_bodies()[0]["messages"] == [{"role": "user", "content": "What is 2 + 2?"}]
    assert system_of(servers["agg"].chat_bodies()[0]).endswith(
        "\n1. a says: w1 w2 w3 w4 w5 w6 w7 w8\n2. b says: w1 w2 w3 w4 w5 w6 w7 w8"
    )


def test_fault_ask_answers_with_one_of_four_proposers_failing(tmp_path: Path, fake_engine: FakeEngineFactory) -> None:
    names = ["p1", "p2", "p3", "p4"]
    faults: dict[str, Any] = {"p3": {"status": 500, "error_message": "CUDA out of memory"}}
    servers: dict[str, FakeServer | str] = {
        name: fake_engine(model=name, template="{model} thinks 4", **faults.get(name, {})) for name in names
    }
    agg = servers["agg"] = fake_engine(model="agg", reply="It is 4.")
    result = invoke("ask", "--json", "--config", write_config(tmp_path, servers, [names], min_ok=2), "2 + 2?")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["answer"] == "It is 4."
    agents = out["trace"]["layers"][0]["agents"]
    assert [(a["endpoint"], a["status"]) for a in agents] == [("p1", "ok"), ("p2", "ok"), ("p3", "error"), ("p4", "ok")]
    assert agents[2]["error"] == "engine answered 500: CUDA out of memory"
    assert agents[2]["attempts"] == 2  # retried once, as configured
    assert out["trace"]["layers"][0]["proposals_used"] == 3
    assert system_of(agg.chat_bodies()[0]).endswith("\n1. p1 thinks 4\n2. p2 thinks 4\n3. p4 thinks 4")
    assert {p["endpoint"]: p["texts"] for p in out["proposals"]}["p3"] == []


def test_fault_ask_json_usage_sums_every_call(tmp_path: Path, fake_engine: FakeEngineFactory) -> None:
    servers = {"a": fake_engine(model="a"), "b": fake_engine(model="b", tokens=3), "agg": fake_engine(model="agg")}
    result = invoke("ask", "--json", "--config", write_config(tmp_path, servers, [["a", "b"], ["a"]]), "hello there")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    bodies = [body for server in servers.values() for body in server.chat_bodies()]
    assert len(bodies) == 4
    prompt = sum(prompt_words(body["messages"]) for body in bodies)
    assert out["usage"]["prompt_tokens"] == prompt  # the fake counts words: the sum is checkable
    assert out["usage"]["total_tokens"] == out["usage"]["prompt_tokens"] + out["usage"]["completion_tokens"]
    assert out["usage"] == out["trace"]["usage"]
    assert out["finish_reason"] == "stop" and out["model"] == "moa"


def test_fault_ask_exits_with_one_line_when_every_proposer_fails(
    tmp_path: Path, fake_engine: FakeEngineFactory
) -> None:
    names = ["p1", "p2", "p3", "p4"]
    servers: dict[str, FakeServer | str] = {name: fake_engine(model=name, status=500) for name in names}
    gone = fake_engine(model="p4")
    gone.stop()
    servers["p4"] = gone.base_url  # connection refused
    agg = servers["agg"] = fake_engine(model="agg")
    result = moa_local("ask", "--config", write_config(tmp_path, servers, [names]), "2 + 2?")
    line = one_error_line(result)
    assert line == (
        "moa: layer 1 got 0 of the 1 answers it needs — "
        "p1: error (engine answered 500: injected fault); p2: error (engine answered 500: injected fault); "
        "p3: error (engine answered 500: injected fault); p4: error (cannot connect to the engine (ConnectError))"
    )
    assert result.stdout == ""
    assert agg.chat_bodies() == []


def test_fault_three_layer_mixture_sends_the_right_references(tmp_path: Path, fake_engine: FakeEngineFactory) -> None:
    template = "{model}-answer-{request}"
    a, b, agg = (fake_engine(model=name, template=template) for name in ("a", "b", "agg"))
    config = write_config(tmp_path, {"a": a, "b": b, "agg": agg}, [["a", "b"], ["a", "b"]])
    result = invoke("ask", "--config", config, "Name a prime.")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "agg-answer-1\n"
    user = {"role": "user", "content": "Name a prime."}
    for server in (a, b):
        first, second = server.chat_bodies()
        assert first["messages"] == [user]
        assert second["messages"] == [
            {"role": "system", "content": f"{DEFAULT_REFERENCE_PROMPT}\n1. a-answer-1\n2. b-answer-1"},
            user,
        ]
    assert agg.chat_bodies()[0]["messages"] == [
        {"role": "system", "content": f"{DEFAULT_REFERENCE_PROMPT}\n1. a-answer-2\n2. b-answer-2"},
        user,
    ]
    assert [body["max_tokens"] for body in a.chat_bodies()] == [64, 64]
    assert agg.chat_bodies()[0]["max_tokens"] == 128


def test_fault_show_proposals_go_to_stderr(tmp_path: Path, fake_engine: FakeEngineFactory) -> None:
    servers = {
        "a": fake_engine(model="a", reply="alpha proposal"),
        "b": fake_engine(model="b", status=503, error_message="warming up"),
        "agg": fake_engine(model="agg", reply="final synthesis"),
    }
    config = write_config(tmp_path, servers, [["a", "b"]], endpoint_settings={"max_retries": 0})
    result = invoke("ask", "--show-proposals", "--config", config, "question")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "final synthesis\n"
    assert "alpha proposal" in result.stderr
    assert "layer 1 · a · ok" in result.stderr
    assert "layer 1 · b · error" in result.stderr and "engine answered 503: warming up" in result.stderr
    assert "layer 1: 1 answers passed on" in result.stderr
    assert "final synthesis" not in result.stderr


def test_fault_ask_an_endpoint_directly(tmp_path: Path, fake_engine: FakeEngineFactory) -> None:
    servers = {"a": fake_engine(model="a", reply="plain answer"), "agg": fake_engine(model="agg")}
    result = invoke("ask", "--mixture", "a", "--config", write_config(tmp_path, servers, [["a"]]), "hi")
    assert (result.returncode, result.stdout) == (0, "plain answer\n")
    assert servers["a"].chat_bodies()[0]["messages"] == [{"role": "user", "content": "hi"}]
    assert servers["agg"].chat_bodies() == []


def test_ask_unknown_mixture_is_one_line(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"a": "http://127.0.0.1:9/v1", "agg": "http://127.0.0.1:9/v1"}, [["a"]])
    line = one_error_line(invoke("ask", "--mixture", "nope", "--config", config, "hi"))
    assert line == "no mixture or endpoint 'nope' (known: moa, a, agg)"


def test_ask_bad_config_is_one_line(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"a": "http://127.0.0.1:9/v1", "agg": "http://127.0.0.1:9/v1"}, [["a"]])
    config.write_text(config.read_text().replace("timeout_s: 10", "timout_s: 10", 1), encoding="utf-8")
    line = one_error_line(invoke("ask", "--config", config, "hi"))
    assert line.startswith(f"{config}: endpoints.a.timout_s: unknown key (allowed: api_key, ")


def test_ask_missing_config_is_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "none.yaml"
    assert one_error_line(invoke("ask", "--config", missing, "hi")) == f"{missing}: file not found"


def test_ask_invalid_yaml_is_one_line(tmp_path: Path) -> None:
    config = tmp_path / "broken.yaml"
    config.write_text("endpoints:\n  a: {base_url: x\n", encoding="utf-8")
    assert one_error_line(invoke("ask", "--config", config, "hi")).startswith(f"{config}: invalid YAML at line ")


def test_fault_check_reports_up_and_down(tmp_path: Path, fake_engine: FakeEngineFactory) -> None:
    up = fake_engine(model="a")
    wrong = fake_engine(model="something-else")
    gone = fake_engine(model="c")
    gone.stop()
    config = write_config(tmp_path, {"a": up, "b": wrong, "c": gone.base_url}, [["a", "b"]], aggregator="a")
    result = invoke("check", "--config", config)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"{config}: valid (3 endpoints, 1 mixtures)"
    assert lines[1] == f"  a  up    {up.base_url} serves a"
    assert lines[2] == f"  b  DOWN  {wrong.base_url}: serves something-else, not b"
    assert lines[3] == f"  c  DOWN  {gone.base_url}: cannot connect to the engine (ConnectError)"
    assert lines[4] == "  mixture moa: can reach its quorum"
    assert result.stderr.strip() == "Error: some endpoints are down (see above)"


def test_fault_check_all_up(tmp_path: Path, fake_engine: FakeEngineFactory) -> None:
    servers = {"a": fake_engine(model="a"), "agg": fake_engine(model="agg")}
    result = invoke("check", "--config", write_config(tmp_path, servers, [["a"]]))
    assert result.returncode == 0, result.stderr
    assert [line.split()[:2] for line in result.stdout.splitlines()[1:3]] == [["a", "up"], ["agg", "up"]]
    assert result.stdout.splitlines()[3] == "  mixture moa: can reach its quorum"


def test_check_bad_config_is_one_line(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"a": "http://127.0.0.1:9/v1"}, [["a", "x"]], aggregator="a")
    line = one_error_line(invoke("check", "--config", config))
    assert line == f"{config}: mixtures.moa.layers.0.agents.1.endpoint: unknown endpoint 'x' (known: a)"


def test_check_probes_past_their_bound_are_one_moa_error(tmp_path: Path, fake_engine: FakeEngineFactory) -> None:
    up = fake_engine(model="a")
    with socket.socket() as silent:  # accepts connections (the backlog does) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        mute = f"http://127.0.0.1:{silent.getsockname()[1]}/v1"
        config = load_config(write_config(tmp_path, {"a": up, "b": mute}, [["a", "b"]], aggregator="a"))
        with pytest.raises(MoaError) as caught:
            asyncio.run(probe_endpoints(config, timeout_s=0.5))
    assert str(caught.value) == "the endpoint probes took longer than 0.5 s (no answer from b)"


def test_fault_ask_records_pool_and_pipeline_in_one_registry(tmp_path: Path, fake_engine: FakeEngineFactory) -> None:
    from moa_local.cli.ask import answer
    from moa_local.metrics import Metrics
    from moa_local.mixture.catalog import run_spec
    from moa_local.mixture.spec import Overrides

    servers = {"a": fake_engine(model="a"), "agg": fake_engine(model="agg")}
    config = load_config(write_config(tmp_path, servers, [["a"]]))
    metrics = Metrics()
    asyncio.run(answer(config, run_spec(config, None, Overrides()), "hi", out=io.StringIO(), metrics=metrics))
    text = metrics.render()[0].decode()
    assert 'moa_agent_calls_total{endpoint="a",outcome="ok",role="proposer"} 1.0' in text  # the pool's
    assert 'moa_layer_duration_seconds_count{layer="1",mixture="moa"} 1.0' in text  # the pipeline's


@pytest.mark.parametrize("command", [["prometheus-config", "-o"], ["compose", "--out"]])
def test_unwritable_output_file_is_one_line(tmp_path: Path, command: list[str]) -> None:
    config = Path(__file__).resolve().parents[2] / "configs" / "gpu-small.yaml"
    target = tmp_path / "missing-folder" / "out.yml"
    line = one_error_line(invoke(*command, target, "--config", config))
    assert line == f"{target}: cannot write (No such file or directory)"


def test_unusable_run_folder_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    config = write_config(tmp_path, {"a": "http://127.0.0.1:9/v1"}, [["a"]], aggregator="a")
    serve = f"    serve: {{engine: vllm-cpu, model_path: {tmp_path}}}\n"
    config.write_text(config.read_text().replace("model: a\n", f"model: a\n{serve}"))
    for command in ("up", "down"):
        line = one_error_line(invoke(command, "--config", config, "--run-dir", tmp_path / "file" / "run"))
        assert line == f"{tmp_path / 'file' / 'run'}: cannot use this run folder (Not a directory)"
