"""The Grafana dashboard: well-formed, valid PromQL, and every metric it names is one the system exports.

The engine test compares with what a live gateway and live vLLM servers
return; the offline tests compare with a fresh `Metrics` registry and with
the names a real vLLM CPU server exported (recorded in tests/data, refreshed
by the engine test's failure message when vLLM changes).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from moa_local.config import Config
from moa_local.metrics import Metrics
from tests.support.dashboard_queries import instantiate, load_dashboard, metric_names, targets
from tests.support.engine_fixtures import CpuStack, eventually
from tests.support.gateway_fixtures import GatewayFactory
from tests.support.metrics_configs import small_config

VLLM_NAMES_FILE = Path(__file__).resolve().parents[1] / "data" / "vllm-metric-names.txt"
PROVISIONING = Path(__file__).resolve().parents[2] / "serving" / "grafana" / "provisioning"
PROMTOOL = shutil.which("promtool")


def exported_sample_names(text: str) -> set[str]:
    return {sample.name for family in text_string_to_metric_families(text) for sample in family.samples}


def gateway_names_offline() -> set[str]:
    metrics = Metrics()
    metrics.preset(small_config(["qwen"], {"moa": 1}))
    metrics.enable_batches()  # as create_app does: the gateway runs batch jobs
    metrics.observe_layer("moa", 1, 1.0, 1)
    metrics.set_endpoint_up("qwen", True)
    metrics.set_circuit_open("qwen", False)
    return exported_sample_names(metrics.render()[0].decode())


def recorded_vllm_names() -> set[str]:
    lines = VLLM_NAMES_FILE.read_text().splitlines()
    return {line.strip() for line in lines if line.strip() and not line.startswith("#")}


def used_names() -> dict[str, set[str]]:
    """Metric name -> titles of the panels that use it."""
    used: dict[str, set[str]] = {}
    for target in targets():
        for name in metric_names(target.expr):
            used.setdefault(name, set()).add(target.panel)
    return used


def test_metric_names_are_extracted_from_promql() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (endpoint, le) (rate(vllm:e2e_request_latency_seconds_bucket{endpoint=~"$e",'
        ' x="a{b}"}[$__rate_interval]))) / on (endpoint) group_left max by (endpoint) (moa_inflight) > bool 1e3'
    )
    assert metric_names(expr) == {"vllm:e2e_request_latency_seconds_bucket", "moa_inflight"}
    assert metric_names("sum(rate(moa_requests_total[5m] offset 1h)) or vector(0)") == {"moa_requests_total"}


def test_dashboard_has_the_four_rows_and_sane_layout() -> None:
    board = load_dashboard()
    assert board["uid"] == "moa-local"
    rows = [p["title"] for p in board["panels"] if p["type"] == "row"]
    assert rows == ["Mixtures", "Agents (per endpoint)", "Engines (vLLM)", "Batches"]
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
            assert panel["targets"], panel["title"]
    variables = {v["name"] for v in board["templating"]["list"]}
    assert variables == {"datasource", "mixture", "endpoint"}


def test_every_panel_shows_what_the_issue_asks_for() -> None:
    used = used_names()
    for name in (
        "moa_requests_total", "moa_request_duration_seconds_bucket", "moa_time_to_first_token_seconds_bucket",
        "moa_overhead_seconds_bucket", "moa_agent_duration_seconds_bucket", "moa_tokens_total", "moa_inflight",
        "moa_agent_calls_total", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
        "vllm:prefix_cache_hits_total", "vllm:prefix_cache_queries_total", "vllm:generation_tokens_total",
    ):  # fmt: skip
        assert name in used, name


def test_every_moa_family_is_on_the_dashboard() -> None:
    used = {name.removesuffix("_bucket").removesuffix("_sum").removesuffix("_count") for name in used_names()}
    metrics = Metrics()
    metrics.preset(small_config(["e"], {"m": 1}))
    metrics.enable_batches()
    metrics.set_endpoint_up("e", True)
    metrics.observe_layer("m", 1, 1.0, 1)
    families = {
        f.name + ("_total" if f.type == "counter" else "")
        for f in text_string_to_metric_families(metrics.render()[0].decode())
        if not f.name.endswith("_created")
    }
    assert families - used == set()


def test_every_moa_name_on_the_dashboard_is_exported() -> None:
    names = {name for name in used_names() if name.startswith("moa_")}
    assert names - gateway_names_offline() == set()


def test_every_vllm_name_on_the_dashboard_is_in_a_real_scrape() -> None:
    names = {name for name in used_names() if not name.startswith("moa_")}
    assert names
    assert names - recorded_vllm_names() == set()


@pytest.mark.skipif(PROMTOOL is None, reason="promtool missing: run serving/install-test-tools.sh")
def test_every_query_is_valid_promql(tmp_path: Path) -> None:
    rules = [{"record": f"dashboard:query_{i}", "expr": instantiate(t.expr)} for i, t in enumerate(targets())]
    rules_file = tmp_path / "dashboard.yml"
    rules_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    assert PROMTOOL is not None
    result = subprocess.run(
        [PROMTOOL, "check", "rules", str(rules_file)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_provisioning_points_grafana_at_prometheus_and_the_dashboards() -> None:
    datasources = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text())
    (source,) = datasources["datasources"]
    assert source["type"] == "prometheus" and source["uid"] == "prometheus" and source["isDefault"]
    providers = yaml.safe_load((PROVISIONING / "dashboards" / "moa.yml").read_text())
    (provider,) = providers["providers"]
    assert provider["type"] == "file" and provider["options"]["path"]


def open_gateway(config: Config) -> Config:
    """The config with gateway keys off, whatever the environment holds."""
    return config.model_copy(update={"gateway": config.gateway.model_copy(update={"api_keys_env": None})})


@pytest.mark.engine
def test_every_dashboard_metric_is_in_a_live_scrape(cpu_stack: CpuStack, gateway_server: GatewayFactory) -> None:
    """One mixture request through a real gateway, then scrape it and every real engine."""
    config = open_gateway(cpu_stack.config)
    gateway = gateway_server(config)
    mixture = next(iter(config.mixtures))
    with httpx.Client(timeout=300) as client:
        answer = client.post(
            f"{gateway.base_url}/chat/completions",
            json={"model": mixture, "messages": [{"role": "user", "content": "Name a colour."}], "max_tokens": 16},
        )
        assert answer.status_code == 200, answer.text

        def every_name_is_exported() -> None:
            gateway_names = exported_sample_names(client.get(f"{gateway.url}/metrics").text)
            engine_names: set[str] = set()
            for endpoint in config.endpoints.values():
                root = endpoint.base_url.removesuffix("/v1")
                engine_names |= exported_sample_names(client.get(f"{root}/metrics").text)
            exported = gateway_names | engine_names
            missing = {name: sorted(panels) for name, panels in used_names().items() if name not in exported}
            assert not missing, f"dashboard metrics no live server exports: {missing}"
            assert recorded_vllm_names() <= engine_names, (
                f"refresh tests/data/{VLLM_NAMES_FILE.name} from a live scrape: "
                f"{sorted(n for n in engine_names if n.startswith('vllm:'))}"
            )

        # moa_endpoint_up appears with the prober's first round, which runs beside the request.
        eventually(every_name_is_exported, timeout_s=30)
