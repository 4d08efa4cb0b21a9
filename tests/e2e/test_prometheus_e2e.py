"""A real Prometheus scrapes the real gateway and the real CPU vLLM engines; PromQL sees what clients saw.

The shipped rules are loaded as they are; the scrape config is the one
`moa-local prometheus-config` renders, with free ports and a 1 s interval.
A mixture with a proposer on a dead port injects one failure per request.
What Prometheus shows arrives with later scrapes and rule evaluations, so
every assertion on it waits, bounded, until it holds.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from moa_local.config import Config, parse_config
from moa_local.deploy.prometheus_config import GATEWAY_JOB, prometheus_config, render
from tests.support.dashboard_queries import instantiate, targets
from tests.support.engine_fixtures import CpuStack, eventually
from tests.support.gateway_fixtures import GatewayFactory, GatewayServer

pytestmark = [pytest.mark.engine, pytest.mark.prometheus]

RULES_DIR = Path(__file__).resolve().parents[2] / "serving" / "prometheus" / "rules"
PROMETHEUS = shutil.which("prometheus")
REQUESTS = 4
MIXTURE = "moa-e2e"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def with_a_broken_proposer(config: Config) -> Config:
    """The CPU config plus an endpoint nobody listens on, proposing in a small mixture."""
    raw = config.model_dump(mode="json", exclude_none=True)
    raw["endpoints"]["broken"] = {
        "base_url": f"http://127.0.0.1:{free_port()}/v1",
        "model": "nothing",
        "max_retries": 0,
        "circuit": {"failures": 1000},
    }
    agents = [{"endpoint": name, "max_tokens": 16} for name in ("smollm2", "qwen", "broken")]
    raw["mixtures"] = {
        MIXTURE: {"layers": [{"agents": agents, "min_ok": 1}], "aggregator": {"endpoint": "qwen", "max_tokens": 16}}
    }
    raw["gateway"].update(api_keys_env=None, probe_interval_s=1.0)
    return parse_config(json.dumps(raw), "<e2e>")


class Prometheus:
    def __init__(self, url: str, log: Path) -> None:
        self.url = url
        self.log = log

    def query(self, promql: str) -> list[dict[str, Any]]:
        response = httpx.get(f"{self.url}/api/v1/query", params={"query": promql}, timeout=10)
        body = response.json()
        assert body.get("status") == "success", f"{promql}: {body} (log: {self.log_tail()})"
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def value(self, promql: str) -> float:
        result = self.query(promql)
        assert len(result) == 1, f"{promql}: expected one series, got {result}"
        return float(result[0]["value"][1])

    def wait_for(self, promql: str, expected: float, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        seen: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            seen = self.query(promql)
            if len(seen) == 1 and float(seen[0]["value"][1]) == expected:
                return
            time.sleep(0.5)
        raise AssertionError(f"{promql} did not reach {expected} in {timeout_s} s: {seen}")

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""


@pytest.fixture
def e2e_gateway(cpu_stack: CpuStack, gateway_server: GatewayFactory) -> GatewayServer:
    return gateway_server(with_a_broken_proposer(cpu_stack.config))


@pytest.fixture
def prometheus(e2e_gateway: GatewayServer, tmp_path: Path) -> Iterator[Prometheus]:
    if PROMETHEUS is None:
        pytest.skip("prometheus missing: run serving/install-test-tools.sh")
    rules = [str(path) for path in sorted(RULES_DIR.glob("*.yml"))]
    document = prometheus_config(
        e2e_gateway.config, gateway=f"127.0.0.1:{e2e_gateway.port}", interval_s=1, rule_files=rules
    )
    config_file = tmp_path / "prometheus.yml"
    config_file.write_text(render(document))
    port = free_port()
    log = tmp_path / "prometheus.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [PROMETHEUS, f"--config.file={config_file}", f"--storage.tsdb.path={tmp_path / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    server = Prometheus(f"http://127.0.0.1:{port}", log)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, f"prometheus exited: {server.log_tail()}"
            try:
                if httpx.get(f"{server.url}/-/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"prometheus not ready in 30 s: {server.log_tail()}"
            time.sleep(0.2)
        # Ready is not scraped: rate() needs a sample taken before the requests, so the test starts
        # once Prometheus holds the gateway's preset (zero) request histogram.
        server.wait_for(f'sum(moa_request_duration_seconds_count{{job="{GATEWAY_JOB}", mixture="{MIXTURE}"}})', 0)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def test_prometheus_sees_what_the_clients_saw(e2e_gateway: GatewayServer, prometheus: Prometheus) -> None:
    client = e2e_gateway.client(timeout=300)
    prompt_tokens = completion_tokens = 0
    for i in range(REQUESTS):
        question = [{"role": "user", "content": f"Give one word for the colour of the sky ({i})."}]
        if i % 2:
            reply = client.chat.completions.create(model=MIXTURE, messages=question)  # type: ignore[arg-type]
            usage = reply.usage
        else:
            stream = client.chat.completions.create(
                model=MIXTURE,
                messages=question,
                stream=True,
                stream_options={"include_usage": True},  # type: ignore[arg-type]
            )
            usage = [chunk for chunk in stream][-1].usage
        assert usage is not None
        prompt_tokens += usage.prompt_tokens
        completion_tokens += usage.completion_tokens

    prometheus.wait_for(f'sum(moa_requests_total{{mixture="{MIXTURE}", outcome="ok"}})', REQUESTS)
    prometheus.wait_for("sum(moa_tokens_total)", prompt_tokens + completion_tokens)
    # Prometheus scrapes each target on its own schedule and evaluates rules and alerts after the
    # scrapes; the gateway's prober sets moa_endpoint_up on its own clock. So each block of
    # assertions below is retried until it holds (bounded by `eventually`).

    def gateway_view() -> None:
        assert prometheus.value('sum(moa_tokens_total{kind="completion"})') == completion_tokens
        assert prometheus.value('sum(moa_agent_calls_total{endpoint="broken", outcome="error"})') == REQUESTS
        assert prometheus.value('sum(moa_agent_calls_total{outcome="error"})') == REQUESTS
        assert prometheus.value(f'sum(moa_proposals_used_count{{mixture="{MIXTURE}"}})') == REQUESTS
        assert prometheus.value(f'sum(moa_proposals_used_sum{{mixture="{MIXTURE}"}})') <= 2 * REQUESTS

    eventually(gateway_view)

    def engines_view() -> None:  # the engines' own view, under the same endpoint labels
        up = {s["metric"]["endpoint"]: s["value"][1] for s in prometheus.query('up{job="vllm"}')}
        assert up == {"smollm2": "1", "qwen": "1", "broken": "0"}
        assert prometheus.value('moa_endpoint_up{endpoint="qwen"}') == 1
        assert prometheus.value('moa_endpoint_up{endpoint="broken"}') == 0
        assert prometheus.value("sum(vllm:generation_tokens_total)") >= completion_tokens
        for usage_share in prometheus.query("vllm:kv_cache_usage_perc"):
            assert 0.0 <= float(usage_share["value"][1]) <= 1.0

    eventually(engines_view)

    # Every recording rule has data, and the dead endpoint's alert is on its way.
    groups = [group for path in sorted(RULES_DIR.glob("*.yml")) for group in yaml.safe_load(path.read_text())["groups"]]
    recorded = [rule["record"] for group in groups for rule in group["rules"] if "record" in rule]

    def rules_and_alerts() -> None:
        empty = [name for name in recorded if not prometheus.query(name)]
        assert not empty, f"recording rules without data: {empty}"
        median = prometheus.value(f'mixture:moa_request_duration_seconds:p50{{mixture="{MIXTURE}"}}')
        assert 0.0 < median < 300.0
        alerts = prometheus.query('ALERTS{alertname="MoaEndpointDown", endpoint="broken"}')
        assert alerts and alerts[0]["metric"]["alertstate"] in ("pending", "firing")

    eventually(rules_and_alerts)

    def dashboard_view() -> None:  # every dashboard query returns data (Grafana's variables at "All")
        empty_panels = [t.panel for t in targets() if not prometheus.query(instantiate(t.expr))]
        assert not empty_panels, f"dashboard panels without data: {empty_panels}"

    eventually(dashboard_view)
    print(f"\nsum(moa_tokens_total) = {prometheus.value('sum(moa_tokens_total)'):g} "
          f"(clients' usage: {prompt_tokens} + {completion_tokens})")  # fmt: skip
