"""`moa-local check` probing continuation of a final assistant message, against fake engines on loopback.

The fake plays an engine that continues (it answers "6 7 8 ..."), one that
restarts ("1 2 3 ..."), one that answers something else, and one that
refuses the parameters (a 400): the verdict rests on the answer's text (the
rule's own cases are tests/engines/test_continuation.py's), and every
probe's request must be the one vLLM continues on.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from tests.cli.test_cli import invoke

if TYPE_CHECKING:
    from tests.support.fake_fixtures import FakeEngineFactory, FakeServer

# The CPU qwen engine's answer to the probe, but for its leading space (the fake's replies start at a word).
CONTINUES = "6 7 8 9 10 11 1"
RESTARTS = "1 2 3 4 5 6 7 8"


def write_config(tmp_path: Path, servers: dict[str, FakeServer], *, start: str, agg: dict[str, Any]) -> Path:
    """Endpoints 'p' (proposer) and 'agg' (aggregator of mixture 'm', with `agg` added to its settings)."""
    endpoints = {
        name: {"base_url": server.base_url, "model": name, "timeout_s": 10, "max_retries": 0}
        for name, server in servers.items()
    }
    endpoints["agg"].update(agg)
    mixture = {"layers": [{"agents": [{"endpoint": "p"}]}], "aggregator": {"endpoint": "agg", "start": start}}
    path = tmp_path / "moa.yaml"
    path.write_text(yaml.safe_dump({"endpoints": endpoints, "mixtures": {"m": mixture}}), encoding="utf-8")
    return path


def assert_probe_request(server: FakeServer) -> None:
    """The one call the probe makes: the conversation ends in the assistant's prefix, vLLM's two parameters set."""
    bodies = server.chat_bodies()
    assert len(bodies) == 1
    body = bodies[0]
    assert body["messages"] == [
        {"role": "user", "content": "Count from 1 to 20, separated by spaces."},
        {"role": "assistant", "content": "1 2 3 4 5"},
    ]
    assert (body["continue_final_message"], body["add_generation_prompt"]) == (True, False)
    assert (body["temperature"], body["max_tokens"], body.get("stream", False)) == (0, 16, False)


def test_fault_check_probes_the_aggregator_of_a_staircase_mixture_and_passes(
    tmp_path: Path, fake_engine: FakeEngineFactory
) -> None:
    servers = {"p": fake_engine(model="p"), "agg": fake_engine(model="agg", reply=CONTINUES)}
    config = write_config(tmp_path, servers, start="staircase", agg={"continues_final_message": True})
    result = invoke("check", "--config", config)
    assert result.returncode == 0, result.stderr
    assert (
        result.stdout.splitlines()[-1]
        == f"  continuation agg: continues a final assistant message (it answered {CONTINUES!r})"
    )
    assert_probe_request(servers["agg"])
    assert servers["p"].chat_bodies() == []  # not an aggregator of a staircase mixture: not probed


def test_fault_check_fails_when_a_staircase_aggregator_restarts(tmp_path: Path, fake_engine: FakeEngineFactory) -> None:
    servers = {"p": fake_engine(model="p"), "agg": fake_engine(model="agg", reply=RESTARTS)}
    serve = {"engine": "vllm-cpu", "model_path": str(tmp_path)}
    config = write_config(tmp_path, servers, start="staircase", agg={"serve": serve})
    result = invoke("check", "--config", config)
    assert result.returncode == 1
    assert result.stdout.splitlines()[-1] == (
        f"  continuation agg: RESTARTS instead of continuing a final assistant message (it answered {RESTARTS!r}); "
        "MISMATCH: the config takes it as able (continues_final_message: serve.engine vllm-cpu); "
        "mixture m uses start: staircase on it"
    )
    assert result.stderr.strip() == (
        "Error: agg does not continue a final assistant message, as start: staircase needs (m) (see above)"
    )
    assert_probe_request(servers["agg"])


def test_fault_check_names_the_engine_error_of_a_probe(tmp_path: Path, fake_engine: FakeEngineFactory) -> None:
    servers = {"p": fake_engine(model="p"), "agg": fake_engine(model="agg")}
    servers["agg"].set(status=400, error_message="Unrecognized request argument: continue_final_message")
    config = write_config(tmp_path, servers, start="staircase", agg={"continues_final_message": True})
    result = invoke("check", "--config", config)
    assert result.returncode == 1
    assert result.stdout.splitlines()[-1] == (
        "  continuation agg: ERROR probing whether it continues a final assistant message: engine answered 400: "
        "Unrecognized request argument: continue_final_message; "
        "MISMATCH: the config takes it as able (continues_final_message: declared true); "
        "mixture m uses start: staircase on it"
    )
    assert "Traceback" not in result.stderr
    assert_probe_request(servers["agg"])


def test_fault_check_probes_nothing_without_staircase_or_the_flag(
    tmp_path: Path, fake_engine: FakeEngineFactory
) -> None:
    servers = {"p": fake_engine(model="p"), "agg": fake_engine(model="agg", reply=RESTARTS)}
    result = invoke("check", "--config", write_config(tmp_path, servers, start="early", agg={}))
    assert result.returncode == 0, result.stderr
    assert "continuation" not in result.stdout
    assert servers["agg"].chat_bodies() == [] and servers["p"].chat_bodies() == []


def test_fault_check_flag_probes_every_endpoint_and_says_what_the_config_misses(
    tmp_path: Path, fake_engine: FakeEngineFactory
) -> None:
    servers = {"p": fake_engine(model="p", reply="Sure, here you go"), "agg": fake_engine(model="agg", reply=CONTINUES)}
    config = write_config(tmp_path, servers, start="after_layers", agg={})
    result = invoke("check", "--config", config, "--probe-continuation")
    assert result.returncode == 0, result.stderr  # no staircase mixture relies on either
    assert result.stdout.splitlines()[-2:] == [
        f"  continuation agg: continues a final assistant message (it answered {CONTINUES!r}); "
        "the config does not know it: set endpoints.agg.continues_final_message: true",
        "  continuation p: UNCLEAR whether it continues a final assistant message (it answered 'Sure, here you go')",
    ]
    assert_probe_request(servers["p"])
    assert_probe_request(servers["agg"])


def test_fault_check_does_not_probe_an_endpoint_that_is_down(tmp_path: Path, fake_engine: FakeEngineFactory) -> None:
    servers = {"p": fake_engine(model="p", reply=RESTARTS), "agg": fake_engine(model="agg", reply=CONTINUES)}
    config = write_config(tmp_path, servers, start="staircase", agg={"continues_final_message": True})
    servers["agg"].stop()
    result = invoke("check", "--config", config, "--probe-continuation")
    assert result.returncode == 1
    assert [line for line in result.stdout.splitlines() if "continuation" in line] == [
        f"  continuation p: RESTARTS instead of continuing a final assistant message (it answered {RESTARTS!r})"
    ]  # p's config makes no claim and no staircase mixture aggregates on it: shown, not a failure of its own
    assert result.stderr.strip() == "Error: some endpoints are down (see above)"


def test_fault_check_flag_names_a_declaration_the_probe_contradicts(
    tmp_path: Path, fake_engine: FakeEngineFactory
) -> None:
    servers = {"p": fake_engine(model="p", reply=RESTARTS), "agg": fake_engine(model="agg", reply=CONTINUES)}
    config = write_config(tmp_path, servers, start="after_layers", agg={"continues_final_message": False})
    result = invoke("check", "--config", config, "--probe-continuation")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-2] == (
        f"  continuation agg: continues a final assistant message (it answered {CONTINUES!r}); "
        "the config says it cannot (endpoints.agg.continues_final_message: false)"
    )
