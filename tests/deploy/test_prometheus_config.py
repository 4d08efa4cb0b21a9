"""The shipped Prometheus config and rules: generated from the configs, valid for promtool, alerts that fire."""

from __future__ import annotations

import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from moa_local.cli import main
from moa_local.config import load_config, parse_config
from moa_local.deploy.prometheus_config import engine_targets, gateway_target, prometheus_config, render

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "serving" / "prometheus"
RULES = sorted((PROMETHEUS_DIR / "rules").glob("*.yml"))
PROMTOOL = shutil.which("promtool")

needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool missing: run serving/install-test-tools.sh")

COMPOSE_LIKE = """
endpoints:
  qwen: {base_url: "http://vllm-qwen:8000/v1", model: q}
  llama: {base_url: "https://llama.example.internal/serving/v1", model: l}
mixtures:
  moa:
    layers: [{agents: [{endpoint: qwen}, {endpoint: llama}]}]
    aggregator: {endpoint: qwen}
gateway: {host: 0.0.0.0, port: 9000}
"""


def promtool(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *map(str, args)], capture_output=True, text=True, timeout=60, cwd=cwd, check=False)


def test_shipped_config_is_the_one_generated_from_the_cpu_profile() -> None:
    expected = render(prometheus_config(load_config(ROOT / "configs" / "cpu.yaml")), "configs/cpu.yaml")
    assert (PROMETHEUS_DIR / "prometheus.yml").read_text() == expected, (
        "regenerate: moa-local prometheus-config --config configs/cpu.yaml -o serving/prometheus/prometheus.yml"
    )


def test_cpu_profile_scrapes_the_gateway_and_both_engines() -> None:
    document = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in document["scrape_configs"]}
    assert jobs["moa-gateway"]["static_configs"] == [{"targets": ["127.0.0.1:8080"]}]
    assert jobs["vllm"]["static_configs"] == [
        {"targets": ["127.0.0.1:8101"], "labels": {"endpoint": "smollm2"}},
        {"targets": ["127.0.0.1:8102"], "labels": {"endpoint": "qwen"}},
    ]
    assert document["rule_files"] == ["rules/*.yml"]


def test_targets_follow_base_urls_and_the_gateway_override() -> None:
    config = parse_config(COMPOSE_LIKE)
    assert gateway_target(config) == "127.0.0.1:9000"  # 0.0.0.0 is reached on loopback
    assert engine_targets(config) == {
        "qwen": ("http", "vllm-qwen:8000", "/metrics"),
        "llama": ("https", "llama.example.internal:443", "/serving/metrics"),
    }
    document = prometheus_config(config, gateway="gateway:8080", interval_s=0.5, bearer_file="/run/secrets/moa-key")
    gateway_job, engine_job = document["scrape_configs"]
    assert gateway_job["static_configs"] == [{"targets": ["gateway:8080"]}]
    assert gateway_job["authorization"] == {"type": "Bearer", "credentials_file": "/run/secrets/moa-key"}
    assert engine_job["static_configs"][1]["labels"] == {
        "endpoint": "llama",
        "__scheme__": "https",
        "__metrics_path__": "/serving/metrics",
    }
    assert document["global"] == {"scrape_interval": "500ms", "evaluation_interval": "500ms"}


def test_cli_prints_the_config_and_names_a_bad_file_in_one_line(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["prometheus-config", "--config", str(ROOT / "configs" / "cpu.yaml")])
    assert result.exit_code == 0, result.output
    assert yaml.safe_load(result.output)["scrape_configs"][0]["job_name"] == "moa-gateway"
    missing = runner.invoke(main, ["prometheus-config", "--config", str(tmp_path / "nope.yaml")])
    assert missing.exit_code == 1
    assert "nope.yaml: file not found" in missing.output
    assert "Traceback" not in missing.output


@needs_promtool
def test_promtool_accepts_the_shipped_config_and_its_rules() -> None:
    result = promtool("check", "config", "prometheus.yml", cwd=PROMETHEUS_DIR)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(RULES)} rule files found" in result.stdout + result.stderr


@needs_promtool
def test_promtool_accepts_a_generated_config_for_other_deployments(tmp_path: Path) -> None:
    document = prometheus_config(
        parse_config(COMPOSE_LIKE), gateway="gateway:8080", interval_s=1, rule_files=[str(p) for p in RULES]
    )
    (tmp_path / "prometheus.yml").write_text(render(document))
    result = promtool("check", "config", tmp_path / "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
@pytest.mark.parametrize("rules", RULES, ids=[p.name for p in RULES])
def test_promtool_accepts_each_rules_file(rules: Path) -> None:
    result = promtool("check", "rules", rules)
    assert result.returncode == 0, result.stdout + result.stderr


# promtool's rule unit tests: synthetic series in, expected rule values and alerts out.
RULE_TESTS = """
evaluation_interval: 15s
tests:
  - interval: 15s
    input_series:
      - series: 'moa_endpoint_up{endpoint="qwen"}'
        values: '1 1 0 0 0 0 0 0'
      - series: 'moa_endpoint_up{endpoint="smollm2"}'
        values: '1 1 1 1 1 1 1 1'
    alert_rule_test:
      - eval_time: 45s
        alertname: MoaEndpointDown
        exp_alerts: []
      - eval_time: 1m45s
        alertname: MoaEndpointDown
        exp_alerts:
          - exp_labels: {severity: critical, endpoint: qwen}
            exp_annotations:
              summary: "Endpoint qwen fails its health probes"
              description: >-
                The gateway's health probes of qwen have failed for over a minute;
                mixtures using it run short of proposals or fail.

  - interval: 1m
    input_series:
      # 10 requests a minute, 2 of them failing; a quorum miss at minute 3.
      - series: 'moa_requests_total{mixture="moa", outcome="ok"}'
        values: '0+8x10'
      - series: 'moa_requests_total{mixture="moa", outcome="error"}'
        values: '0+2x10'
      - series: 'moa_requests_total{mixture="moa", outcome="cancelled"}'
        values: '0+0x10'
      - series: 'moa_quorum_misses_total{mixture="moa", layer="1"}'
        values: '0 0 0 1 1 1 1 1 1 1 1'
      - series: 'moa_tokens_total{endpoint="qwen", kind="completion"}'
        values: '0+600x10'
    promql_expr_test:
      - expr: mixture:moa_request_errors:ratio_rate5m
        eval_time: 10m
        exp_samples:
          - labels: 'mixture:moa_request_errors:ratio_rate5m{mixture="moa"}'
            value: 0.2
      - expr: endpoint:moa_tokens:rate1m
        eval_time: 10m
        exp_samples:
          - labels: 'endpoint:moa_tokens:rate1m{endpoint="qwen", kind="completion"}'
            value: 10
    alert_rule_test:
      - eval_time: 4m
        alertname: MoaQuorumMisses
        exp_alerts:
          - exp_labels: {severity: warning, mixture: moa, layer: "1"}
            exp_annotations:
              summary: "Mixture moa missed its quorum in layer 1"
              description: >-
                About 1 layer runs of moa ended with fewer than min_ok answers in the
                last 5 minutes (503/504 to clients).
      - eval_time: 10m
        alertname: MoaQuorumMisses
        exp_alerts: []
      - eval_time: 10m
        alertname: MoaRequestErrorRatioHigh
        exp_alerts:
          - exp_labels: {severity: warning, mixture: moa}
            exp_annotations:
              summary: "Mixture moa fails 20% of requests"
              description: "Over 5% of moa requests ended in error or timeout for 5 minutes."

  - interval: 1m
    input_series:
      # Every request takes between 60 and 120 s, for 15 minutes.
      - series: 'moa_request_duration_seconds_bucket{mixture="moa", le="60.0"}'
        values: '0+0x15'
      - series: 'moa_request_duration_seconds_bucket{mixture="moa", le="120.0"}'
        values: '0+4x15'
      - series: 'moa_request_duration_seconds_bucket{mixture="moa", le="+Inf"}'
        values: '0+4x15'
      - series: 'moa_requests_total{mixture="moa", outcome="ok"}'
        values: '0+4x15'
    promql_expr_test:
      - expr: mixture:moa_request_errors:ratio_rate5m
        eval_time: 15m
        exp_samples:
          - labels: 'mixture:moa_request_errors:ratio_rate5m{mixture="moa"}'
            value: 0
    alert_rule_test:
      - eval_time: 8m
        alertname: MoaRequestLatencyHigh
        exp_alerts: []
      - eval_time: 15m
        alertname: MoaRequestLatencyHigh
        exp_alerts:
          - exp_labels: {severity: warning, mixture: moa}
            exp_annotations:
              summary: "Mixture moa p95 latency is 1m 57s"
              description: "The 95th percentile of moa request latency has been over 60 s for 10 minutes."
"""


@needs_promtool
def test_alerts_fire_on_synthetic_series(tmp_path: Path) -> None:
    tests = yaml.safe_load(textwrap.dedent(RULE_TESTS))
    tests["rule_files"] = [str(p) for p in RULES]
    (tmp_path / "rules_test.yml").write_text(yaml.safe_dump(tests))
    result = promtool("test", "rules", tmp_path / "rules_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
