"""Where the config's deployments go: the `compose:` and `k8s:` sections (images, ports, namespace, storage, labels).

`moa-local compose` and `moa-local k8s` read them; the gateway and the
engines never do. Left out: the engines' own serve blocks (`schema.py`).
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, Field, field_validator, model_validator

from moa_local.config.frozen import Frozen

K8S_NAME_PATTERN = r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$"  # a DNS-1035 label: Service and namespace names
_LABEL_VALUE = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
_DNS_SUBDOMAIN = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"


class ComposeConfig(Frozen):
    """How `moa-local compose` writes the Docker Compose file (GPU deployment)."""

    vllm_image: str = "vllm/vllm-openai:v0.33.0"  # pinned; a serve block's `image` overrides it
    gateway_image: str = "moa-local-gateway:latest"  # built from the repository's Dockerfile
    prometheus_image: str = "prom/prometheus:v3.5.0"
    grafana_image: str = "grafana/grafana:12.0.2"
    publish_host: str = "127.0.0.1"  # host address the gateway and Grafana publish on
    gateway_port: int | None = Field(None, ge=1, le=65535)  # host port; None = gateway.port
    grafana_port: int = Field(3000, ge=1, le=65535)
    engine_start_period_s: int = Field(1800, ge=60)  # health grace while weights load


def _k8s_name(value: str) -> str:
    if not re.fullmatch(K8S_NAME_PATTERN, value):
        raise ValueError("must be a Kubernetes name: up to 63 lowercase letters, digits and '-', from a letter on")
    return value


K8sName = Annotated[str, AfterValidator(_k8s_name)]


def _check_label(key: str, value: str) -> None:
    prefix, _, name = key.rpartition("/")
    if (prefix and not re.fullmatch(_DNS_SUBDOMAIN, prefix)) or not re.fullmatch(_LABEL_VALUE, name):
        raise ValueError(f"{key!r} is not a Kubernetes label key")
    if value and not re.fullmatch(_LABEL_VALUE, value):
        raise ValueError(f"{value!r} (label {key!r}) is not a Kubernetes label value")


class K8sStorageConfig(Frozen):
    """Where engine pods read the model folders (read-only), each named as its model_path's last part."""

    claim: K8sName | None = None  # a PersistentVolumeClaim holding the folders
    host_path: str | None = None  # or a folder holding them on every GPU node

    @field_validator("host_path")
    @classmethod
    def _absolute(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("/"):
            raise ValueError("must be an absolute path")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> K8sStorageConfig:
        if (self.claim is None) == (self.host_path is None):
            raise ValueError("set exactly one of 'claim' (a PersistentVolumeClaim) and 'host_path'")
        return self


class K8sConfig(Frozen):
    """How `moa-local k8s` writes the Kubernetes manifests; the images and engine start period come from `compose`."""

    namespace: K8sName = "moa-local"
    storage: K8sStorageConfig = K8sStorageConfig(claim="moa-local-models")
    # Engine pods' nodeSelector, e.g. {nvidia.com/gpu.product: NVIDIA-H100...}
    node_selector: dict[str, str] = Field(default_factory=dict)
    gpus_per_node: int = Field(8, ge=1)  # GPUs of one node: an engine pod cannot ask for more (`plan --k8s`)
    gateway_replicas: int = Field(2, ge=1)
    gateway_max_replicas: int | None = Field(None, ge=1)  # the autoscaler's ceiling; None = twice gateway_replicas
    gateway_cpu_target: int = Field(70, ge=10, le=100)  # the autoscaler's target average CPU use, percent
    secret: K8sName = "moa-local"  # the gateway's API keys and the config's ${VAR}s
    shm_size: str = "16Gi"  # /dev/shm of each engine pod (in memory)
    # Labels your Prometheus selects ServiceMonitors, PodMonitors and PrometheusRules by
    # (kube-prometheus-stack: {release: <its release name>}).
    monitoring_labels: dict[str, str] = Field(default_factory=dict)
    prometheus_namespace: K8sName = "monitoring"  # where Prometheus runs
    prometheus_pod_labels: dict[str, str] = Field(default_factory=lambda: {"app.kubernetes.io/name": "prometheus"})
    grafana_dashboard_label: str = "grafana_dashboard"  # the label Grafana's dashboard sidecar watches (value "1")

    @field_validator("node_selector", "monitoring_labels", "prometheus_pod_labels")
    @classmethod
    def _labels(cls, value: dict[str, str]) -> dict[str, str]:
        for key, item in value.items():
            _check_label(key, item)
        return value

    @field_validator("shm_size")
    @classmethod
    def _quantity(cls, value: str) -> str:
        if not re.fullmatch(r"[1-9][0-9]*(Ki|Mi|Gi|Ti)", value):
            raise ValueError("must be a size in binary units, like 16Gi")
        return value

    @field_validator("grafana_dashboard_label")
    @classmethod
    def _label_key(cls, value: str) -> str:
        _check_label(value, "1")
        return value

    @model_validator(mode="after")
    def _replicas(self) -> K8sConfig:
        if self.gateway_max_replicas is not None and self.gateway_max_replicas < self.gateway_replicas:
            raise ValueError(
                f"gateway_max_replicas {self.gateway_max_replicas} is below gateway_replicas {self.gateway_replicas}"
            )
        return self

    @property
    def max_replicas(self) -> int:
        return self.gateway_max_replicas or 2 * self.gateway_replicas
