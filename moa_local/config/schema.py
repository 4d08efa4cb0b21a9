"""The config's shape: frozen pydantic models, one per YAML section.

Each model forbids unknown keys and checks what one section can check on its
own (ranges, URL form, an engine's GPUs). Reading the file, `${VAR}`
expansion, error messages and the checks across sections (an agent's
endpoint exists, `min_ok` is reachable) are `loading.py`'s.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from moa_local.paths import cache_root
from moa_local.urls import default_port

DEFAULT_BATCH_SHARE = 0.5  # gateway.batch_share
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]*$"
Name = Annotated[str, Field(pattern=NAME_PATTERN)]
K8S_NAME_PATTERN = r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$"  # a DNS-1035 label: Service and namespace names
_LABEL_VALUE = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
_DNS_SUBDOMAIN = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CircuitConfig(_Frozen):
    failures: int = Field(5, ge=1)  # consecutive failures that open the circuit
    cooldown_s: float = Field(30.0, gt=0)  # skipped this long, then probed again


class ServeConfig(_Frozen):
    """How `moa-local up` (bare metal) or `moa-local compose` starts the engine."""

    engine: Literal["vllm-cpu", "vllm"]
    model_path: str
    gpus: tuple[int, ...] = ()  # GPU indices; tensor parallel = len(gpus)
    cpus: str | None = None  # vllm-cpu: OpenMP core binding, e.g. "0" or "0-1"
    kv_cache_gib: int | None = Field(None, ge=1)  # vllm-cpu: KV cache space in GiB
    dtype: str | None = None
    max_model_len: int | None = Field(None, ge=16)  # default: the endpoint's context_window
    max_num_seqs: int | None = Field(None, ge=1)
    gpu_memory_utilization: float | None = Field(None, gt=0, le=1)
    kv_cache_memory_bytes: int | None = Field(None, ge=1)
    quantization: str | None = None
    kv_cache_dtype: str | None = None
    image: str | None = None  # override the pinned vllm/vllm-openai image
    args: tuple[str, ...] = ()  # extra engine flags, passed as given
    node: str | None = None  # the machine that runs it (`compose --node`); None = where the gateway runs
    # Machines one server spans (vLLM over Ray): pipeline parallel = nodes, each node's `gpus` tensor parallel.
    nodes: int = Field(1, ge=1)

    @field_validator("model_path")
    @classmethod
    def _expand_home(cls, value: str) -> str:
        return os.path.expanduser(value)

    @field_validator("gpus")
    @classmethod
    def _distinct_gpus(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if len(set(value)) != len(value) or any(g < 0 for g in value):
            raise ValueError("GPU indices must be distinct and >= 0")
        return value

    @model_validator(mode="after")
    def _engine_fits(self) -> ServeConfig:
        if self.engine == "vllm" and not self.gpus:
            raise ValueError("engine 'vllm' needs at least one GPU index in 'gpus'")
        if self.engine == "vllm-cpu" and self.gpus:
            raise ValueError("engine 'vllm-cpu' runs on CPU: remove 'gpus'")
        if self.nodes > 1 and self.engine != "vllm":
            raise ValueError("only engine 'vllm' spans several nodes ('nodes' > 1)")
        if self.nodes > 1 and self.node is not None:
            raise ValueError("a server spanning several nodes has no one 'node': remove it")
        return self

    @property
    def tensor_parallel(self) -> int:
        return max(1, len(self.gpus))

    @property
    def pipeline_parallel(self) -> int:
        return self.nodes


class EndpointConfig(_Frozen):
    base_url: str
    model: str  # the served model name
    api_key: str | None = Field(None, repr=False)  # may be "${VAR}"; kept out of reprs and logs
    api_key_env: str | None = None  # or the name of a variable holding the key
    timeout_s: float = Field(120.0, gt=0)
    connect_timeout_s: float = Field(5.0, gt=0)
    max_concurrency: int = Field(32, ge=1)
    max_retries: int = Field(2, ge=0, le=10)
    context_window: int | None = Field(None, ge=16)  # tokens; None = not guarded here
    circuit: CircuitConfig = CircuitConfig()
    serve: ServeConfig | None = None

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        try:
            valid = parts.scheme in ("http", "https") and bool(parts.hostname) and parts.port != 0
        except ValueError:  # urlsplit's port: not a number in 0-65535
            valid = False
        if not valid:
            raise ValueError("must be an http(s) URL like http://127.0.0.1:8000/v1")
        return value.rstrip("/")

    @property
    def accepts_seed(self) -> bool:
        """False for vLLM's CPU build, whose engine dies on a seeded request prefilled in chunks (see endpoint.py)."""
        return self.serve is None or self.serve.engine != "vllm-cpu"

    def resolved_api_key(self) -> str:
        if self.api_key:
            return self.api_key
        if self.api_key_env:
            return os.environ.get(self.api_key_env, "")
        return ""

    @property
    def port(self) -> int:
        return default_port(self.base_url)


class SamplingConfig(_Frozen):
    endpoint: str
    temperature: float = Field(0.7, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    max_tokens: int = Field(512, ge=1)
    system_prompt: str | None = None


class AgentConfig(SamplingConfig):
    n: int = Field(1, ge=1, le=16)  # samples in one request (Self-MoA)


class AggregatorConfig(SamplingConfig):
    pass


class LayerConfig(_Frozen):
    agents: tuple[AgentConfig, ...] = Field(min_length=1)
    min_ok: int = Field(1, ge=1)
    deadline_s: float | None = Field(None, gt=0)

    @property
    def samples(self) -> int:
        return sum(agent.n for agent in self.agents)


class MixtureConfig(_Frozen):
    layers: tuple[LayerConfig, ...] = Field(min_length=1)
    aggregator: AggregatorConfig
    reference_prompt: str | None = None
    timeout_s: float = Field(600.0, gt=0)  # cap on the whole request
    description: str | None = None


class GatewayConfig(_Frozen):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    api_keys_env: str | None = "MOA_API_KEYS"  # comma-separated keys; unset variable = no auth
    max_inflight: int = Field(256, ge=1)
    max_body_bytes: int = Field(1_048_576, ge=1024)
    body_timeout_s: float = Field(30.0, gt=0)  # a request body must arrive within this, from its first byte (408)
    probe_interval_s: float = Field(10.0, gt=0)
    log_content: bool = False  # log prompt and answer text (debug only)
    # At most this share of each endpoint's max_concurrency is held by batch calls (at least one slot).
    batch_share: float = Field(DEFAULT_BATCH_SHARE, gt=0, le=1)
    data_dir: str | None = None  # batch jobs' database and files; None = <cache>/gateway (MOA_LOCAL_CACHE)
    max_upload_bytes: int = Field(200 * 1024 * 1024, ge=1024)  # one file uploaded to /v1/files

    @field_validator("data_dir")
    @classmethod
    def _expand_data_dir(cls, value: str | None) -> str | None:
        return os.path.expanduser(value) if value else None

    def data_path(self) -> Path:
        return Path(self.data_dir) if self.data_dir else cache_root() / "gateway"


class ComposeConfig(_Frozen):
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


class K8sStorageConfig(_Frozen):
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


class K8sConfig(_Frozen):
    """How `moa-local k8s` writes the Kubernetes manifests; the images and engine start period come from `compose`."""

    namespace: K8sName = "moa-local"
    storage: K8sStorageConfig = K8sStorageConfig(claim="moa-local-models")
    node_selector: dict[str, str] = {}  # engine pods' nodeSelector, e.g. {nvidia.com/gpu.product: NVIDIA-H100...}
    gpus_per_node: int = Field(8, ge=1)  # GPUs of one node: an engine pod cannot ask for more (`plan --k8s`)
    gateway_replicas: int = Field(2, ge=1)
    gateway_max_replicas: int | None = Field(None, ge=1)  # the autoscaler's ceiling; None = twice gateway_replicas
    gateway_cpu_target: int = Field(70, ge=10, le=100)  # the autoscaler's target average CPU use, percent
    secret: K8sName = "moa-local"  # the gateway's API keys and the config's ${VAR}s
    shm_size: str = "16Gi"  # /dev/shm of each engine pod (in memory)
    # Labels your Prometheus selects ServiceMonitors, PodMonitors and PrometheusRules by
    # (kube-prometheus-stack: {release: <its release name>}).
    monitoring_labels: dict[str, str] = {}
    prometheus_namespace: K8sName = "monitoring"  # where Prometheus runs
    prometheus_pod_labels: dict[str, str] = {"app.kubernetes.io/name": "prometheus"}
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


class Config(_Frozen):
    endpoints: dict[Name, EndpointConfig] = Field(min_length=1)
    mixtures: dict[Name, MixtureConfig] = {}
    gateway: GatewayConfig = GatewayConfig()
    compose: ComposeConfig = ComposeConfig()
    k8s: K8sConfig = K8sConfig()

    def model_names(self) -> list[str]:
        return [*self.mixtures, *self.endpoints]
