"""Prometheus Operator objects and the Grafana dashboards, for a cluster that runs both.

A ServiceMonitor scrapes every gateway pod, one per single-node engine
scrapes its pod, and a PodMonitor scrapes each LeaderWorkerSet's leader (the
one pod of the group that serves). Relabelling gives the targets the labels
of the compose stack's Prometheus (`prometheus_config.py`): job `moa-gateway`
or `vllm`, and `endpoint` = the endpoint's config name, which replaces the
port name the operator puts there; the shipped alerts and the dashboard
select by them. The PrometheusRule holds the shipped recording rules and
alerts (`serving/prometheus/rules/*.yml`) as they are; the dashboards
(`serving/grafana/dashboards/*.json`) go into a ConfigMap carrying the label
Grafana's dashboard sidecar watches.

Everything here is in one file of the rendered folder: on a cluster without
the Prometheus Operator, leave that file out of the kustomization.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from moa_local.config import Config
from moa_local.deploy.k8s.objects import (
    APP,
    DASHBOARDS,
    ENGINE_JOB,
    GATEWAY,
    GATEWAY_JOB,
    ROLE_LABEL,
    RULES,
    SCRAPE_INTERVAL,
    SCRAPE_KEY,
    labels,
    metadata,
)
from moa_local.errors import ConfigError
from moa_local.urls import metrics_path

MONITORING_API = "monitoring.coreos.com/v1"


def monitors(config: Config, services: dict[str, str], namespace: str) -> list[dict[str, Any]]:
    """A ServiceMonitor for the gateway; per engine a ServiceMonitor, or a PodMonitor for a group's leader."""
    k8s = config.k8s
    own = {"app.kubernetes.io/name": APP, **k8s.monitoring_labels}
    gateway_endpoint: dict[str, Any] = {
        "port": "http",
        "path": "/metrics",
        "interval": SCRAPE_INTERVAL,
        "relabelings": [_set("job", GATEWAY_JOB)],
    }
    if config.gateway.api_keys_env:  # /metrics is behind the API keys too
        gateway_endpoint["authorization"] = {"type": "Bearer", "credentials": {"name": k8s.secret, "key": SCRAPE_KEY}}
    found = [_monitor("ServiceMonitor", GATEWAY, namespace, own, labels("gateway", GATEWAY), gateway_endpoint)]
    for name, service in services.items():
        endpoint = config.endpoints[name]
        scrape = {
            "port": "http",
            "path": metrics_path(endpoint.base_url),
            "interval": SCRAPE_INTERVAL,
            "relabelings": [_set("job", ENGINE_JOB), _set("endpoint", name)],
        }
        selector = labels("engine", service)
        if endpoint.serve is not None and endpoint.serve.nodes > 1:
            found.append(_monitor("PodMonitor", service, namespace, own, {**selector, ROLE_LABEL: "leader"}, scrape))
        else:
            found.append(_monitor("ServiceMonitor", service, namespace, own, selector, scrape))
    return found


def rules(config: Config, serving_dir: Path, namespace: str) -> dict[str, Any]:
    groups: list[Any] = []
    for path in sorted((serving_dir / "prometheus" / "rules").glob("*.yml")):
        groups += yaml.safe_load(path.read_text(encoding="utf-8"))["groups"]
    if not groups:
        raise ConfigError(f"{serving_dir}/prometheus/rules: no rule files (*.yml) found")
    own = {"app.kubernetes.io/name": APP, **config.k8s.monitoring_labels}
    return {
        "apiVersion": MONITORING_API,
        "kind": "PrometheusRule",
        "metadata": metadata(RULES, namespace, own),
        "spec": {"groups": groups},
    }


def dashboards(config: Config, serving_dir: Path, namespace: str) -> dict[str, Any]:
    files = sorted((serving_dir / "grafana" / "dashboards").glob("*.json"))
    if not files:
        raise ConfigError(f"{serving_dir}/grafana/dashboards: no dashboards (*.json) found")
    own = {"app.kubernetes.io/name": APP, config.k8s.grafana_dashboard_label: "1"}
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(DASHBOARDS, namespace, own),
        "data": {path.name: path.read_text(encoding="utf-8") for path in files},
    }


def _monitor(
    kind: str, name: str, namespace: str, own: dict[str, str], selector: dict[str, str], endpoint: dict[str, Any]
) -> dict[str, Any]:
    endpoints = "podMetricsEndpoints" if kind == "PodMonitor" else "endpoints"
    return {
        "apiVersion": MONITORING_API,
        "kind": kind,
        "metadata": metadata(name, namespace, own),
        "spec": {"selector": {"matchLabels": selector}, endpoints: [endpoint]},
    }


def _set(label: str, value: str) -> dict[str, str]:
    """A relabelling that sets `label` to `value` on every target of the monitor."""
    return {"action": "replace", "targetLabel": label, "replacement": value}
