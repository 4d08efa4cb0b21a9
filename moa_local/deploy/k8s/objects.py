"""What every manifest shares: object names, labels, metadata, and the YAML they are written as.

Names are fixed where they are the deployment's own (`moa-local-gateway`)
and come from the config where they are the user's: an engine's Service is
named by its base_url's host, as a compose service is, so the gateway's
config works unchanged inside the cluster. `engine_service` checks that and
raises `ConfigError` naming the key otherwise.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

import yaml

from moa_local.config import K8S_NAME_PATTERN, Config, EndpointConfig
from moa_local.errors import ConfigError
from moa_local.urls import is_loopback

APP = "moa-local"
GATEWAY = "moa-local-gateway"
GATEWAY_CONFIG = "moa-local-config"
DASHBOARDS = "moa-local-dashboards"
RULES = "moa-local"
ENGINES_POLICY = "moa-local-engines"
RESERVED = frozenset({GATEWAY, GATEWAY_CONFIG, DASHBOARDS, RULES, ENGINES_POLICY})
MODELS_DIR = "/models"  # where model folders appear inside engine containers, as in the compose file
LWS_NAME_LABEL = "leaderworkerset.sigs.k8s.io/name"  # set by the LeaderWorkerSet controller on its pods
ROLE_LABEL = "moa-local/role"
ENDPOINT_ANNOTATION = "moa-local/endpoint"  # config names may hold ':', which label values may not
SCRAPE_KEY = "metrics-key"  # the Secret's key holding one gateway API key, for Prometheus
SCRAPE_INTERVAL = "5s"  # as the compose stack's Prometheus (and Grafana's timeInterval)
GATEWAY_JOB = "moa-gateway"  # job labels the shipped alerts select (prometheus_config.py's)
ENGINE_JOB = "vllm"


def labels(component: str, instance: str) -> dict[str, str]:
    """The labels that select one part's pods (and name it for `kubectl get -l`)."""
    return {
        "app.kubernetes.io/name": APP,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/instance": instance,
    }


def metadata(
    name: str, namespace: str, object_labels: dict[str, str], annotations: dict[str, str] | None = None
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "labels": dict(object_labels)}
    if annotations:
        meta["annotations"] = dict(annotations)
    return meta


def served(config: Config) -> dict[str, EndpointConfig]:
    """Endpoints the cluster runs: every one with a serve block, in config order."""
    return {name: endpoint for name, endpoint in config.endpoints.items() if endpoint.serve is not None}


def engine_service(name: str, endpoint: EndpointConfig) -> str:
    host = urlsplit(endpoint.base_url).hostname or ""
    if not re.fullmatch(K8S_NAME_PATTERN, host) or host == "localhost":
        slug = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")
        raise ConfigError(
            f"endpoints.{name}.base_url: the cluster runs this engine behind a Service named by the URL's host; "
            f"use http://<service>:<port>/v1, e.g. http://vllm-{slug}:8000/v1 (got {endpoint.base_url!r})"
        )
    if host in RESERVED:
        raise ConfigError(f"endpoints.{name}.base_url: '{host}' is the name of a moa-local object; choose another")
    return host


def check_config(config: Config) -> dict[str, str]:
    """Endpoint name -> Service name of every served engine; refuses what cannot run in the cluster."""
    services: dict[str, str] = {}
    for name, endpoint in config.endpoints.items():
        serve = endpoint.serve
        if serve is not None and serve.engine != "vllm":
            raise ConfigError(
                f"endpoints.{name}.serve.engine: the cluster runs GPU engines (vllm); "
                f"start '{serve.engine}' engines with `moa-local up`"
            )
        host = urlsplit(endpoint.base_url).hostname or ""
        if is_loopback(host):
            raise ConfigError(
                f"endpoints.{name}.base_url: {host} inside the gateway's pod is the pod itself; "
                "name a Service or another host"
            )
        if serve is None:
            continue
        service = engine_service(name, endpoint)
        taken = next((other for other, used in services.items() if used == service), None)
        if taken is not None:
            raise ConfigError(f"endpoints.{name}.base_url: Service '{service}' is already endpoint {taken}'s")
        services[name] = service
    return services


def dump(documents: list[dict[str, Any]]) -> str:
    """Several objects as one YAML stream, in the order given."""
    return "---\n".join(
        yaml.dump(document, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=1000)
        for document in documents
    )


class _Dumper(yaml.SafeDumper):
    """Writes multi-line strings (rules, the config, the dashboard) as readable `|` blocks, and no aliases."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _represent_str)
