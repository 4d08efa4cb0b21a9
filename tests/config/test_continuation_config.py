"""`continues_final_message`: how it resolves, and the load-time refusal of `start: staircase` without it."""

from __future__ import annotations

from pathlib import Path

import pytest

from moa_local.config import Config, load_config
from moa_local.errors import ConfigError

CPU = "serve: {engine: vllm-cpu, model_path: /models/q}"
GPU = "serve: {engine: vllm, model_path: /models/q, gpus: [0]}"
NOT_KNOWN = (
    "mixtures.m.aggregator.start: staircase needs an endpoint that continues a final assistant message; "
    "'agg' is not known to (set endpoints.agg.continues_final_message: true if it is a vLLM server)"
)


def config_text(*, agg: str = "", start: str = "staircase") -> str:
    """Endpoints 'q' (plain) and 'agg' (with `agg` added to its mapping); mixture 'm': q proposes, agg aggregates."""
    extra = f", {agg}" if agg else ""
    return (
        "endpoints:\n"
        '  q: {base_url: "http://127.0.0.1:8102/v1", model: q}\n'
        f'  agg: {{base_url: "http://127.0.0.1:8103/v1", model: a{extra}}}\n'
        "mixtures:\n"
        "  m:\n"
        "    layers: [{agents: [{endpoint: q}]}]\n"
        f"    aggregator: {{endpoint: agg, start: {start}}}\n"
    )


def load(tmp_path: Path, text: str) -> Config:
    path = tmp_path / "x.yaml"
    path.write_text(text, encoding="utf-8")
    return load_config(path)


def error_of(tmp_path: Path, text: str) -> str:
    path = tmp_path / "x.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: "), message  # names the file first, like every config error
    return message.removeprefix(f"{path}: ")


@pytest.mark.parametrize(
    ("agg", "expected"),
    [
        ("", False),  # no serve block, nothing declared: unknown, taken as cannot
        (CPU, True),
        (GPU, True),
        ("continues_final_message: true", True),  # an external server the user vouches for
        (f"continues_final_message: false, {GPU}", False),  # what is declared beats the engine
        ("continues_final_message: false", False),
    ],
)
def test_continuation_resolves_from_the_declaration_then_the_engine(tmp_path: Path, agg: str, expected: bool) -> None:
    config = load(tmp_path, config_text(agg=agg, start="after_layers"))
    assert config.endpoints["agg"].can_continue_final_message is expected
    assert config.endpoints["q"].continues_final_message is None  # the default: not declared


@pytest.mark.parametrize("agg", [CPU, GPU, "continues_final_message: true"])
def test_staircase_loads_on_an_endpoint_that_continues(tmp_path: Path, agg: str) -> None:
    config = load(tmp_path, config_text(agg=agg))
    assert config.mixtures["m"].aggregator.start == "staircase"


def test_staircase_on_an_endpoint_not_known_to_continue_is_refused(tmp_path: Path) -> None:
    assert error_of(tmp_path, config_text()) == NOT_KNOWN


def test_staircase_on_an_endpoint_declared_unable_is_refused(tmp_path: Path) -> None:
    message = error_of(tmp_path, config_text(agg=f"continues_final_message: false, {CPU}"))
    assert message == (
        "mixtures.m.aggregator.start: staircase needs an endpoint that continues a final assistant message; "
        "'agg' does not (endpoints.agg.continues_final_message is false)"
    )


@pytest.mark.parametrize("start", ["after_layers", "early"])
def test_other_starts_need_no_continuation(tmp_path: Path, start: str) -> None:
    config = load(tmp_path, config_text(agg="continues_final_message: false", start=start))
    assert config.mixtures["m"].aggregator.start == start


def test_only_the_aggregator_endpoint_matters(tmp_path: Path) -> None:
    # 'q' (a proposer) cannot continue; the staircase is the aggregator's, which can.
    config = load(tmp_path, config_text(agg=CPU))
    assert not config.endpoints["q"].can_continue_final_message


def test_refusal_is_listed_with_the_other_problems(tmp_path: Path) -> None:
    text = config_text() + "  m2:\n    layers: [{agents: [{endpoint: nowhere}]}]\n    aggregator: {endpoint: q}\n"
    assert error_of(tmp_path, text).splitlines() == [
        NOT_KNOWN,
        f"{tmp_path / 'x.yaml'}: mixtures.m2.layers.0.agents.0.endpoint: unknown endpoint 'nowhere' (known: agg, q)",
    ]


def test_continuation_declared_as_a_non_boolean_is_named(tmp_path: Path) -> None:
    message = error_of(tmp_path, config_text(agg="continues_final_message: maybe"))
    assert (
        message == "endpoints.agg.continues_final_message: Input should be a valid boolean, unable to interpret "
        "input (got 'maybe')"
    )
