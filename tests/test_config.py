"""Config loading: every kind of error names file, key path and value, exactly; the shipped configs load."""

from __future__ import annotations

from pathlib import Path

import pytest

from moa_local.config import Config, load_config, parse_config
from moa_local.errors import ConfigError

CONFIGS = Path(__file__).resolve().parent.parent / "configs"

BASE = """\
endpoints:
  qwen: {base_url: "http://127.0.0.1:8102/v1", model: q}
  smollm2: {base_url: "http://127.0.0.1:8101/v1", model: s}
mixtures:
  moa:
    layers:
      - agents:
          - {endpoint: smollm2}
          - {endpoint: qwen}
        min_ok: 1
    aggregator: {endpoint: qwen}
"""


def write(tmp_path: Path, text: str, name: str = "x.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def error_of(tmp_path: Path, text: str) -> str:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    prefix = f"{path}: "
    assert message.startswith(prefix), message  # every error names the file first
    return message[len(prefix) :]


def test_base_config_loads_with_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, BASE))
    assert isinstance(config, Config)
    assert list(config.endpoints) == ["qwen", "smollm2"]
    qwen = config.endpoints["qwen"]
    assert (qwen.base_url, qwen.model, qwen.timeout_s, qwen.max_concurrency, qwen.serve) == (
        "http://127.0.0.1:8102/v1", "q", 120.0, 32, None,
    )  # fmt: skip
    layer = config.mixtures["moa"].layers[0]
    assert [a.endpoint for a in layer.agents] == ["smollm2", "qwen"]
    assert (layer.agents[0].temperature, layer.agents[0].max_tokens, layer.agents[0].n) == (0.7, 512, 1)
    assert (layer.min_ok, layer.deadline_s, layer.samples) == (1, None, 2)
    assert config.mixtures["moa"].reference_prompt is None
    assert config.gateway.host == "127.0.0.1"
    assert config.model_names() == ["moa", "qwen", "smollm2"]


def test_config_is_frozen(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, BASE))
    with pytest.raises(ValueError):
        config.endpoints["qwen"].model = "other"  # type: ignore[misc]


def test_trailing_slash_of_base_url_is_dropped(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, BASE.replace("8102/v1", "8102/v1/")))
    assert config.endpoints["qwen"].base_url == "http://127.0.0.1:8102/v1"


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            "model: q}",
            "model: q, timout_s: 3}",
            "endpoints.qwen.timout_s: unknown key (allowed: api_key, api_key_env, base_url, circuit, "
            "connect_timeout_s, context_window, continues_final_message, max_concurrency, max_retries, model, serve, "
            "timeout_s)",
        ),
        (
            "{endpoint: smollm2}",
            "{endpoint: smollm2, temprature: 1}",
            "mixtures.moa.layers.0.agents.0.temprature: unknown key "
            "(allowed: endpoint, max_tokens, n, system_prompt, temperature, top_p)",
        ),
        (
            "        min_ok: 1",
            "        min_ok: 1\n        quorum: 1",
            "mixtures.moa.layers.0.quorum: unknown key (allowed: agents, deadline_s, min_ok)",
        ),
        (
            "aggregator: {endpoint: qwen}",
            "aggregator: {endpoint: qwen, n: 2}",
            "mixtures.moa.aggregator.n: unknown key (allowed: chunk_tokens, endpoint, max_tokens, start, "
            "start_after_s, step_tokens, system_prompt, temperature, top_p)",
        ),
        (
            "model: q}",
            "model: q, circuit: {failure: 3}}",
            "endpoints.qwen.circuit.failure: unknown key (allowed: cooldown_s, failures)",
        ),
    ],
    ids=["endpoint", "agent", "layer", "aggregator", "circuit"],
)
def test_unknown_key_lists_the_allowed_keys(tmp_path: Path, old: str, new: str, expected: str) -> None:
    assert error_of(tmp_path, BASE.replace(old, new)) == expected


def test_unknown_top_level_key(tmp_path: Path) -> None:
    assert error_of(tmp_path, BASE + "gatway: {port: 1}\n") == (
        "gatway: unknown key (allowed: compose, endpoints, gateway, k8s, mixtures)"
    )


def test_unknown_key_in_serve_block(tmp_path: Path) -> None:
    text = BASE.replace("model: q}", "model: q, serve: {engine: vllm-cpu, model_path: /m, gpu: [1]}}")
    message = error_of(tmp_path, text)
    assert message.startswith("endpoints.qwen.serve.gpu: unknown key (allowed: args, cpus, dtype, engine, ")
    assert "gpus," in message


@pytest.mark.parametrize(
    "url", ["127.0.0.1:8102", "ftp://127.0.0.1/v1", "http:///v1", "http://127.0.0.1:99999/v1", "http://h:port/v1"]
)
def test_bad_url(tmp_path: Path, url: str) -> None:
    assert error_of(tmp_path, BASE.replace('"http://127.0.0.1:8102/v1"', f'"{url}"')) == (
        f"endpoints.qwen.base_url: must be an http(s) URL like http://127.0.0.1:8000/v1 (got {url!r})"
    )


def test_unknown_agent_endpoint_lists_the_known_ones(tmp_path: Path) -> None:
    text = BASE.replace("{endpoint: qwen}\n        min_ok", "{endpoint: qwn}\n        min_ok")
    assert error_of(tmp_path, text) == (
        "mixtures.moa.layers.0.agents.1.endpoint: unknown endpoint 'qwn' (known: qwen, smollm2)"
    )


def test_unknown_aggregator_endpoint(tmp_path: Path) -> None:
    text = BASE.replace("aggregator: {endpoint: qwen}", "aggregator: {endpoint: big}")
    assert error_of(tmp_path, text) == "mixtures.moa.aggregator.endpoint: unknown endpoint 'big' (known: qwen, smollm2)"


def test_min_ok_over_the_samples(tmp_path: Path) -> None:
    assert error_of(tmp_path, BASE.replace("min_ok: 1", "min_ok: 3")) == (
        "mixtures.moa.layers.0.min_ok: 3 is more than the layer's 2 samples"
    )


def test_min_ok_counts_samples_of_n(tmp_path: Path) -> None:
    text = BASE.replace("{endpoint: qwen}\n        min_ok", "{endpoint: qwen, n: 3}\n        min_ok")
    assert load_config(write(tmp_path, text.replace("min_ok: 1", "min_ok: 4"))).mixtures["moa"].layers[0].samples == 4
    assert error_of(tmp_path, text.replace("min_ok: 1", "min_ok: 5")) == (
        "mixtures.moa.layers.0.min_ok: 5 is more than the layer's 4 samples"
    )


def test_mixture_name_colliding_with_an_endpoint(tmp_path: Path) -> None:
    assert error_of(tmp_path, BASE.replace("  moa:", "  qwen:")) == (
        "mixtures.qwen: name 'qwen' is also an endpoint name; model names must be unique"
    )


def test_several_problems_are_all_named(tmp_path: Path) -> None:
    text = BASE.replace("min_ok: 1", "min_ok: 3").replace("aggregator: {endpoint: qwen}", "aggregator: {endpoint: x}")
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value).splitlines() == [
        f"{path}: mixtures.moa.layers.0.min_ok: 3 is more than the layer's 2 samples",
        f"{path}: mixtures.moa.aggregator.endpoint: unknown endpoint 'x' (known: qwen, smollm2)",
    ]


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    text = "endpoints:\n  qwen: {base_url: http://127.0.0.1:1/v1, model: q\nmixtures: {}\n"
    message = error_of(tmp_path, text)
    assert message.startswith("invalid YAML at line 3, column ")
    assert message.endswith("expected ',' or '}', but got ':'")


def test_invalid_yaml_tab_indentation(tmp_path: Path) -> None:
    message = error_of(tmp_path, "endpoints:\n\tqwen: 1\n")
    assert message.startswith("invalid YAML at line 2, column 1: ")


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    assert error_of(tmp_path, "- a\n- b\n") == "the top level must be a mapping with 'endpoints' (got list)"
    assert error_of(tmp_path, "") == "the top level must be a mapping with 'endpoints' (got NoneType)"


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value) == f"{path}: file not found"


def test_missing_required_key(tmp_path: Path) -> None:
    assert error_of(tmp_path, BASE.replace(", model: q}", "}")) == "endpoints.qwen.model: required key is missing"


def test_wrong_type_names_the_value(tmp_path: Path) -> None:
    assert error_of(tmp_path, BASE.replace("min_ok: 1", "min_ok: two")) == (
        "mixtures.moa.layers.0.min_ok: Input should be a valid integer, unable to parse string as an integer "
        "(got 'two')"
    )


def test_empty_agent_list(tmp_path: Path) -> None:
    text = BASE.replace("          - {endpoint: smollm2}\n          - {endpoint: qwen}\n", "").replace(
        "- agents:", "- agents: []"
    )
    assert error_of(tmp_path, text) == (
        "mixtures.moa.layers.0.agents: Tuple should have at least 1 item after validation, not 0 (got [])"
    )


def test_env_var_is_expanded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOA_TEST_KEY", "sk-123")
    config = load_config(write(tmp_path, BASE.replace("model: q}", "model: q, api_key: 'Bearer-${MOA_TEST_KEY}'}")))
    assert config.endpoints["qwen"].api_key == "Bearer-sk-123"
    assert config.endpoints["qwen"].resolved_api_key() == "Bearer-sk-123"


def test_env_var_unset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MOA_TEST_UNSET", raising=False)
    text = BASE.replace("model: q}", "model: q, api_key: '${MOA_TEST_UNSET}'}")
    assert error_of(tmp_path, text) == "endpoints.qwen.api_key: environment variable MOA_TEST_UNSET is not set"


def test_env_var_unset_inside_a_list(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MOA_TEST_UNSET", raising=False)
    text = BASE.replace(
        "model: q}", "model: q, serve: {engine: vllm-cpu, model_path: /m, args: [a, '${MOA_TEST_UNSET}']}}"
    )
    assert error_of(tmp_path, text) == "endpoints.qwen.serve.args.1: environment variable MOA_TEST_UNSET is not set"


def test_env_var_default_applies_when_unset_or_empty(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    serve = "serve: {engine: vllm-cpu, model_path: '${MOA_TEST_ROOT:-/opt/m}/qwen'}"
    text = BASE.replace("model: q}", f"model: q, {serve}}}")
    monkeypatch.delenv("MOA_TEST_ROOT", raising=False)
    assert load_config(write(tmp_path, text)).endpoints["qwen"].serve.model_path == "/opt/m/qwen"  # type: ignore[union-attr]
    monkeypatch.setenv("MOA_TEST_ROOT", "")
    assert load_config(write(tmp_path, text)).endpoints["qwen"].serve.model_path == "/opt/m/qwen"  # type: ignore[union-attr]
    monkeypatch.setenv("MOA_TEST_ROOT", "/data")
    assert load_config(write(tmp_path, text)).endpoints["qwen"].serve.model_path == "/data/qwen"  # type: ignore[union-attr]


def test_dollar_dollar_brace_is_a_literal_dollar_brace_in_prompts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("name", raising=False)
    monkeypatch.setenv("MOA_TEST_TOPIC", "maths")
    prompt = "Fill in $${name} and $${x:-y} about ${MOA_TEST_TOPIC}; it costs $$5 or $3."
    text = BASE.replace("aggregator: {endpoint: qwen}", f"aggregator: {{endpoint: qwen, system_prompt: '{prompt}'}}")
    config = load_config(write(tmp_path, text))
    expected = "Fill in ${name} and ${x:-y} about maths; it costs $$5 or $3."
    assert config.mixtures["moa"].aggregator.system_prompt == expected


def test_unescaped_dollar_brace_in_a_prompt_names_its_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("name", raising=False)
    text = BASE.replace("{endpoint: smollm2}", "{endpoint: smollm2, system_prompt: 'Fill in ${name}'}")
    key = "mixtures.moa.layers.0.agents.0.system_prompt"
    assert error_of(tmp_path, text) == f"{key}: environment variable name is not set"


def test_api_key_env_is_read_at_call_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = load_config(write(tmp_path, BASE.replace("model: q}", "model: q, api_key_env: MOA_TEST_KEY}")))
    monkeypatch.delenv("MOA_TEST_KEY", raising=False)
    assert config.endpoints["qwen"].resolved_api_key() == ""
    monkeypatch.setenv("MOA_TEST_KEY", "sk-9")
    assert config.endpoints["qwen"].resolved_api_key() == "sk-9"


def test_api_key_and_api_key_env_both_set(tmp_path: Path) -> None:
    text = BASE.replace("model: q}", "model: q, api_key: k, api_key_env: K}")
    assert error_of(tmp_path, text) == "endpoints.qwen: set either api_key or api_key_env, not both"


def test_serve_vllm_without_gpus(tmp_path: Path) -> None:
    text = BASE.replace("model: q}", "model: q, serve: {engine: vllm, model_path: /m}}")
    assert error_of(tmp_path, text) == (
        "endpoints.qwen.serve: engine 'vllm' needs at least one GPU index in 'gpus' "
        "(got {'engine': 'vllm', 'model_path': '/m'})"
    )


def test_serve_vllm_cpu_with_gpus(tmp_path: Path) -> None:
    text = BASE.replace("model: q}", "model: q, serve: {engine: vllm-cpu, model_path: /m, gpus: [0]}}")
    assert error_of(tmp_path, text) == (
        "endpoints.qwen.serve: engine 'vllm-cpu' runs on CPU: remove 'gpus' "
        "(got {'engine': 'vllm-cpu', 'model_path': '/m', 'gpus': [0]})"
    )


def test_serve_gpu_indices_distinct(tmp_path: Path) -> None:
    text = BASE.replace("model: q}", "model: q, serve: {engine: vllm, model_path: /m, gpus: [1, 1]}}")
    assert error_of(tmp_path, text) == "endpoints.qwen.serve.gpus: GPU indices must be distinct and >= 0 (got [1, 1])"


def test_serve_block_parsed(tmp_path: Path) -> None:
    text = BASE.replace("model: q}", "model: q, serve: {engine: vllm, model_path: ~/m, gpus: [2, 3]}}")
    serve = load_config(write(tmp_path, text)).endpoints["qwen"].serve
    assert serve is not None
    assert (serve.gpus, serve.tensor_parallel) == ((2, 3), 2)
    assert serve.model_path == str(Path("~/m").expanduser())


def test_bad_endpoint_name(tmp_path: Path) -> None:
    message = error_of(tmp_path, BASE.replace("  smollm2:", "  'small model':"))
    assert message.startswith("endpoints.small model.[key]: String should match pattern ")
    assert message.endswith("(got 'small model')")


def test_parse_config_names_its_source() -> None:
    with pytest.raises(ConfigError, match=r"^inline: invalid YAML at line 1, column"):
        parse_config("a: [", "inline")


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load(path: Path) -> None:
    config = load_config(path)
    assert config.endpoints
    for mixture in config.mixtures.values():
        assert all(agent.endpoint in config.endpoints for layer in mixture.layers for agent in layer.agents)
        assert mixture.aggregator.endpoint in config.endpoints


def test_the_cpu_profile_is_shipped() -> None:
    config = load_config(CONFIGS / "cpu.yaml")
    assert set(config.endpoints) == {"smollm2", "qwen"}
    assert config.mixtures["moa-cpu"].aggregator.endpoint == "qwen"
