"""The gateway in the cluster: its config as a ConfigMap, a Deployment, a Service, a PDB and an autoscaler.

The ConfigMap holds the config file as written (`${VAR}` references kept,
resolved in the pod from the Secret `k8s.secret`), with one change: each
endpoint's `max_concurrency` is divided by the most replicas the autoscaler
runs, so that all replicas together keep each engine's load where the config
puts it (README: "Several gateways"); a comment beside each value says so.
The API keys come from the same Secret; the pods run as the image's non-root
user with a read-only root filesystem, spread over nodes, and roll when the
config changes (its hash is a pod annotation). Readiness is `/health`:
`/ready` is behind the API keys, which a kubelet probe cannot send.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

import yaml

from moa_local.config import Config
from moa_local.deploy.k8s.objects import GATEWAY, GATEWAY_CONFIG, dump, labels, metadata

CONFIG_DIR = "/config"
CACHE_DIR = "/var/cache/moa-local"  # MOA_LOCAL_CACHE: the batch store when gateway.data_dir is unset
GATEWAY_UID = 10001  # the Dockerfile's `moa` user
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:-[^}]*)?\}")


def gateway_config_text(config: Config, raw: dict[str, Any], source: str) -> str:
    """The config file the gateway pods read; `raw` is the file's YAML as loaded, before `${VAR}` expansion."""
    replicas = config.k8s.max_replicas
    endpoints = {str(key): dict(value or {}) for key, value in raw["endpoints"].items()}
    notes: list[str] = []
    for name, endpoint in config.endpoints.items():
        endpoints[name]["max_concurrency"] = max(1, endpoint.max_concurrency // replicas)
        notes.append(f"{endpoint.max_concurrency} in {source}, divided by up to {replicas} gateway replicas")
    text = dump([{"endpoints": endpoints}])
    lines, found = [], iter(notes)
    for line in text.splitlines():
        if line.startswith("    max_concurrency: "):  # an endpoint's own key (two levels in)
            line += f"  # {next(found)}"
        lines.append(line)
    rest = {key: value for key, value in raw.items() if key != "endpoints"}
    header = (
        f"# {source} as the gateway pods read it. Each endpoint's max_concurrency is the config's value\n"
        f"# divided by the most gateway replicas the autoscaler runs ({replicas}): together they send\n"
        "# each engine at most what the config allows.\n"
    )
    return header + "\n".join(lines) + "\n" + (dump([rest]) if rest else "")


def gateway_objects(config: Config, config_text: str, namespace: str) -> list[dict[str, Any]]:
    k8s, gateway = config.k8s, config.gateway
    selector = labels("gateway", GATEWAY)
    volumes: list[dict[str, Any]] = [
        {"name": "config", "configMap": {"name": GATEWAY_CONFIG}},
        {"name": "cache", "emptyDir": {}},
        {"name": "tmp", "emptyDir": {}},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "cache", "mountPath": CACHE_DIR},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    if gateway.data_dir:
        volumes.append({"name": "data", "emptyDir": {}})
        mounts.append({"name": "data", "mountPath": gateway.data_dir})
    container = {
        "name": "gateway",
        "image": config.compose.gateway_image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["moa-local", "serve", "--config", f"{CONFIG_DIR}/config.yaml",
                    "--host", "0.0.0.0", "--port", str(gateway.port)],
        "env": [{"name": "MOA_LOCAL_CACHE", "value": CACHE_DIR}, *_secret_env(config, config_text, k8s.secret)],
        "ports": [{"name": "http", "containerPort": gateway.port, "protocol": "TCP"}],
        "readinessProbe": {"httpGet": {"path": "/health", "port": "http"}, "periodSeconds": 5, "timeoutSeconds": 3},
        "livenessProbe": {"httpGet": {"path": "/health", "port": "http"}, "periodSeconds": 15, "timeoutSeconds": 5,
                          "failureThreshold": 4},
        "resources": {"requests": {"cpu": "500m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}},
        "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                            "capabilities": {"drop": ["ALL"]}},
        "volumeMounts": mounts,
    }  # fmt: skip
    config_hash = hashlib.sha256(config_text.encode()).hexdigest()
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(GATEWAY, namespace, selector),
        "spec": {
            # No `replicas`: the autoscaler owns the count (from minReplicas up); a value here would reset it.
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {"labels": selector, "annotations": {"moa-local/config-sha256": config_hash}},
                "spec": {
                    "enableServiceLinks": False,
                    "securityContext": {"runAsNonRoot": True, "runAsUser": GATEWAY_UID, "runAsGroup": GATEWAY_UID,
                                        "fsGroup": GATEWAY_UID, "seccompProfile": {"type": "RuntimeDefault"}},
                    "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
                                                   "whenUnsatisfiable": "ScheduleAnyway",
                                                   "labelSelector": {"matchLabels": selector}}],
                    "containers": [container],
                    "volumes": volumes,
                },
            },
        },
    }  # fmt: skip
    return [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": metadata(GATEWAY_CONFIG, namespace, selector),
            "data": {"config.yaml": config_text},
        },
        deployment,
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": metadata(GATEWAY, namespace, selector),
            "spec": {
                "type": "ClusterIP",
                "selector": selector,
                "ports": [{"name": "http", "port": gateway.port, "targetPort": "http", "protocol": "TCP"}],
            },
        },
        {
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": metadata(GATEWAY, namespace, selector),
            "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector}},
        },
        {
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": metadata(GATEWAY, namespace, selector),
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": GATEWAY},
                "minReplicas": k8s.gateway_replicas,
                "maxReplicas": k8s.max_replicas,
                "metrics": [
                    {
                        "type": "Resource",
                        "resource": {
                            "name": "cpu",
                            "target": {"type": "Utilization", "averageUtilization": k8s.gateway_cpu_target},
                        },
                    }
                ],
            },
        },
    ]


def raw_config(text: str) -> dict[str, Any]:
    raw = yaml.safe_load(text)
    assert isinstance(raw, dict)  # the text was validated by load_config already
    return raw


def _secret_env(config: Config, config_text: str, secret: str) -> list[dict[str, Any]]:
    """Every variable the config reads, from the Secret: the API keys, endpoint keys and ${VAR}s."""
    required: dict[str, bool] = {}
    if config.gateway.api_keys_env:
        required[config.gateway.api_keys_env] = True
    for endpoint in config.endpoints.values():
        if endpoint.api_key_env:
            required[endpoint.api_key_env] = True
    for match in _ENV_REF.finditer(config_text):
        required[match.group(1)] = required.get(match.group(1), False) or match.group(2) is None
    return [
        {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": name, "optional": not needed}}}
        for name, needed in sorted(required.items())
    ]
