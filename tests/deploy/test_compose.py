"""The generated Compose files: valid for a real Compose implementation, structured as the design says."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from moa_local.cli import main
from moa_local.config import load_config, parse_config
from moa_local.deploy.compose import compose_document, render
from moa_local.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
GPU_PROFILES = ("gpu-seed", "gpu-small", "paper-moa", "paper-moa-lite")
PAPER_NODES = ("gpu-node-1", "gpu-node-2", "gpu-node-3")
SUPPORT = {"gateway", "prometheus", "grafana"}
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}
DOCKER_COMPOSE = shutil.which("docker-compose")
needs_compose = pytest.mark.skipif(
    DOCKER_COMPOSE is None, reason="docker-compose missing: run serving/install-test-tools.sh"
)
PROMTOOL = shutil.which("promtool")


def generate(profile: str, node: str | None = None) -> str:
    """What `moa-local compose` writes at the repository's top level."""
    config_path = f"configs/{profile}.yaml"
    document = compose_document(load_config(ROOT / config_path), config_path=config_path, node=node)
    return render(document, config_path=config_path, node=node)


def services(profile: str, node: str | None = None) -> dict[str, Any]:
    parsed: dict[str, Any] = yaml.safe_load(generate(profile, node))
    return dict(parsed["services"])


def engines(profile: str, node: str | None = None) -> dict[str, Any]:
    return {name: spec for name, spec in services(profile, node).items() if name not in SUPPORT}


def flag(spec: dict[str, Any], name: str) -> str:
    command: list[str] = spec["command"]
    return command[command.index(name) + 1]


def all_variants() -> list[tuple[str, str | None]]:
    variants: list[tuple[str, str | None]] = [(profile, None) for profile in GPU_PROFILES]
    return variants + [(profile, node) for profile in ("paper-moa", "paper-moa-lite") for node in PAPER_NODES]


def test_committed_compose_file_is_the_one_generated_from_gpu_seed() -> None:
    committed = (ROOT / "docker-compose.gpu.yml").read_text(encoding="utf-8")
    assert committed == generate("gpu-seed"), (
        "docker-compose.gpu.yml is stale: run "
        "`moa-local compose --config configs/gpu-seed.yaml --out docker-compose.gpu.yml`"
    )


def test_cli_writes_the_committed_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    printed = CliRunner().invoke(main, ["compose", "--config", "configs/gpu-seed.yaml"])
    assert printed.exit_code == 0
    assert printed.output == (ROOT / "docker-compose.gpu.yml").read_text(encoding="utf-8")
    # Written elsewhere, the file refers to the config and the shipped folders relative to its own place.
    out = tmp_path / "deploy" / "docker-compose.yml"
    out.parent.mkdir()
    result = CliRunner().invoke(main, ["compose", "--config", "configs/gpu-seed.yaml", "--out", str(out)])
    assert result.exit_code == 0, result.output
    back = Path(os.path.relpath(ROOT, out.parent)).as_posix()
    found = yaml.safe_load(out.read_text(encoding="utf-8"))["services"]
    assert found["gateway"]["build"]["context"] == back
    assert found["gateway"]["volumes"][0]["source"] == f"{back}/configs/gpu-seed.yaml"
    assert found["prometheus"]["volumes"][0]["source"] == f"{back}/serving/prometheus/rules"


@needs_compose
@pytest.mark.parametrize(("profile", "node"), all_variants())
def test_docker_compose_accepts_the_file(profile: str, node: str | None, tmp_path: Path) -> None:
    path = tmp_path / "docker-compose.yml"
    path.write_text(generate(profile, node), encoding="utf-8")
    assert DOCKER_COMPOSE is not None
    result = subprocess.run(
        [DOCKER_COMPOSE, "--project-directory", str(ROOT), "-f", str(path), "config", "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("profile", GPU_PROFILES)
def test_every_gpu_profile_loads(profile: str) -> None:
    config = load_config(ROOT / f"configs/{profile}.yaml")
    assert config.mixtures
    for mixture in config.mixtures.values():
        for layer in mixture.layers:
            assert all(agent.temperature == pytest.approx(0.7) or agent.n > 1 for agent in layer.agents)


def test_engines_pin_gpus_and_use_tensor_parallel_equal_to_their_count() -> None:
    config = load_config(ROOT / "configs/gpu-seed.yaml")
    found = engines("gpu-seed")
    assert len(found) == 4
    for name, endpoint in config.endpoints.items():
        assert endpoint.serve is not None
        spec = found[f"vllm-{name.replace('.', '-')}"]
        (device,) = spec["deploy"]["resources"]["reservations"]["devices"]
        assert device == {
            "driver": "nvidia",
            "device_ids": [str(g) for g in endpoint.serve.gpus],
            "capabilities": ["gpu"],
        }
        assert flag(spec, "--tensor-parallel-size") == str(len(endpoint.serve.gpus)) == "2"
        assert flag(spec, "--served-model-name") == endpoint.model
        assert spec["image"] == "vllm/vllm-openai:v0.33.0"
        assert spec["entrypoint"] == ["vllm", "serve"]
        (volume,) = spec["volumes"]
        assert volume["read_only"] is True and volume["source"] == endpoint.serve.model_path
        assert spec["command"][0] == volume["target"]


def test_engines_run_offline_with_host_ipc_and_a_patient_health_check() -> None:
    for spec in engines("gpu-seed").values():
        assert spec["environment"] == OFFLINE
        assert "CUDA_VISIBLE_DEVICES" not in spec["environment"]  # device_ids renumber GPUs from 0 inside
        assert spec["ipc"] == "host"
        check = spec["healthcheck"]
        assert check["test"][:3] == ["CMD", "python3", "-c"]
        assert f"http://127.0.0.1:{flag(spec, '--port')}/health" in check["test"][3]
        assert check["start_period"] == "1800s"  # a 70B model loads for minutes
        assert flag(spec, "--host") == "0.0.0.0"


def test_engines_sit_on_an_internal_network_and_publish_nothing() -> None:
    parsed = yaml.safe_load(generate("gpu-seed"))
    assert parsed["networks"]["engines"] == {"internal": True}
    for spec in engines("gpu-seed").values():
        assert spec["networks"] == ["engines"]
        assert "ports" not in spec
    found = services("gpu-seed")
    assert found["gateway"]["ports"] == ["127.0.0.1:8080:8080"]
    assert found["grafana"]["ports"] == ["127.0.0.1:3000:3000"]
    assert "ports" not in found["prometheus"]
    assert set(found["gateway"]["networks"]) == {"engines", "edge"}
    published = [name for name, spec in found.items() if "ports" in spec]
    assert sorted(published) == ["gateway", "grafana"]


def test_servers_sharing_a_gpu_start_one_after_another() -> None:
    found = engines("gpu-small")
    assert list(found) == ["vllm-qwen2-5-7b", "vllm-llama-3-1-8b", "vllm-mistral-7b"]
    assert "depends_on" not in found["vllm-qwen2-5-7b"]
    assert found["vllm-llama-3-1-8b"]["depends_on"] == {"vllm-qwen2-5-7b": {"condition": "service_healthy"}}
    assert found["vllm-mistral-7b"]["depends_on"] == {"vllm-llama-3-1-8b": {"condition": "service_healthy"}}
    for spec in found.values():
        assert flag(spec, "--gpu-memory-utilization")
        assert flag(spec, "--kv-cache-memory-bytes")
    assert all("depends_on" not in spec for spec in engines("gpu-seed").values())


def test_gateway_prometheus_and_grafana_use_the_shipped_files() -> None:
    found = services("gpu-seed")
    gateway = found["gateway"]
    assert gateway["build"] == {"context": ".", "dockerfile": "Dockerfile"}
    assert gateway["volumes"][0]["source"] == "./configs/gpu-seed.yaml"
    assert gateway["command"][-4:] == ["--host", "0.0.0.0", "--port", "8080"]
    assert gateway["environment"] == {"MOA_API_KEYS": None}  # passed through from the host
    mounts = {v["target"]: v for spec in found.values() for v in spec["volumes"] if v["type"] == "bind"}
    for target, source in [
        ("/etc/prometheus/rules", "./serving/prometheus/rules"),
        ("/etc/grafana/provisioning", "./serving/grafana/provisioning"),
        ("/var/lib/grafana/dashboards/moa-local", "./serving/grafana/dashboards"),
    ]:
        assert mounts[target]["source"] == source and mounts[target]["read_only"] is True
        assert (ROOT / source).is_dir()
    scrape = yaml.safe_load(found["prometheus"]["environment"]["MOA_PROMETHEUS_CONFIG"])
    jobs = {job["job_name"]: job for job in scrape["scrape_configs"]}
    assert jobs["moa-gateway"]["static_configs"][0]["targets"] == ["gateway:8080"]
    targets = {s["labels"]["endpoint"]: s["targets"][0] for s in jobs["vllm"]["static_configs"]}
    assert targets["qwen2-72b"] == "vllm-qwen2-72b:8000"
    assert found["grafana"]["environment"]["GF_ANALYTICS_REPORTING_ENABLED"] == "false"


@pytest.mark.skipif(PROMTOOL is None, reason="promtool missing: run serving/install-test-tools.sh")
def test_prometheus_start_command_writes_a_config_promtool_accepts(tmp_path: Path) -> None:
    """Run the container's start command with /etc/prometheus moved to a temporary folder."""
    prometheus = services("gpu-seed")["prometheus"]
    shutil.copytree(ROOT / "serving/prometheus/rules", tmp_path / "rules")
    script = prometheus["entrypoint"][2].replace("$$", "$").replace("/etc/prometheus", str(tmp_path))
    script = script.split("exec /bin/prometheus")[0] + f"exec {PROMTOOL} check config {tmp_path}/prometheus.yml"
    scrape = prometheus["environment"]["MOA_PROMETHEUS_CONFIG"].replace("/etc/prometheus", str(tmp_path))
    env = {"PATH": "/usr/bin:/bin", "MOA_PROMETHEUS_CONFIG": scrape, "MOA_API_KEYS": "first-key,second-key"}
    result = subprocess.run(["/bin/sh", "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "gateway-key").read_text() == "first-key"


def test_paper_profiles_split_gateway_host_and_engine_nodes() -> None:
    assert set(services("paper-moa")) == SUPPORT  # every engine is on another host
    placed = {node: engines("paper-moa", node) for node in PAPER_NODES}
    assert {node: sorted(found) for node, found in placed.items()} == {
        "gpu-node-1": ["vllm-qwen1-5-110b", "vllm-qwen1-5-72b"],
        "gpu-node-2": ["vllm-mixtral-8x22b", "vllm-wizardlm-2-8x22b"],
        "gpu-node-3": ["vllm-dbrx", "vllm-llama-3-70b"],
    }
    for found in placed.values():
        for spec in found.values():
            port = flag(spec, "--port")
            assert spec["ports"] == [f"{port}:{port}"]  # reached from the gateway host
            assert flag(spec, "--tensor-parallel-size") == "4"
            assert "networks" not in spec


def test_paper_lineups_follow_the_paper() -> None:
    moa = load_config(ROOT / "configs/paper-moa.yaml").mixtures["paper-moa"]
    lite = load_config(ROOT / "configs/paper-moa-lite.yaml").mixtures["paper-moa-lite"]
    assert (len(moa.layers), moa.aggregator.endpoint) == (2, "qwen1.5-110b")
    assert (len(lite.layers), lite.aggregator.endpoint) == (1, "qwen1.5-72b")
    for layer in (*moa.layers, *lite.layers):
        assert len(layer.agents) == 6
        assert {(a.temperature, a.max_tokens) for a in layer.agents} == {(0.7, 512)}


def test_a_base_url_that_names_no_service_is_refused() -> None:
    text = (ROOT / "configs/gpu-seed.yaml").read_text(encoding="utf-8")
    config = parse_config(text.replace("http://vllm-dbrx:8000/v1", "http://127.0.0.1:8004/v1"))
    with pytest.raises(ConfigError, match=r"endpoints\.dbrx\.base_url: compose runs this engine as a service"):
        compose_document(config, config_path="configs/gpu-seed.yaml")


def test_cpu_engines_and_loopback_urls_are_refused_by_the_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    result = CliRunner().invoke(main, ["compose", "--config", "configs/cpu.yaml"])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        "Error: endpoints.smollm2.serve.engine: compose runs GPU engines (vllm); "
        "start 'vllm-cpu' engines with `moa-local up`"
    ]
    remote = "endpoints:\n  far: {base_url: 'http://127.0.0.1:9000/v1', model: m}\n"
    with pytest.raises(ConfigError, match=r"endpoints\.far\.base_url: 127\.0\.0\.1 inside the gateway container"):
        compose_document(parse_config(remote), config_path="x.yaml")


def test_a_node_without_engines_is_refused_by_the_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    result = CliRunner().invoke(main, ["compose", "--config", "configs/paper-moa.yaml", "--node", "nowhere"])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        "Error: configs/paper-moa.yaml: no endpoint has a vllm serve block with node 'nowhere'"
    ]


def test_dockerfile_runs_the_gateway_as_a_non_root_user_with_a_health_check() -> None:
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    assert "FROM python:3.11-slim" in text.splitlines()
    assert "RUN pip install ." in text
    assert "USER moa" in text
    assert "HEALTHCHECK" in text and "/health" in text
    assert 'CMD ["moa-local", "serve", "--config", "/config/config.yaml", "--host", "0.0.0.0"]' in text
    ignored = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    assert "*" in ignored and "!moa_local/" in ignored and "!pyproject.toml" in ignored
