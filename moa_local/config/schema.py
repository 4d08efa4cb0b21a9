"""The config's shape: frozen pydantic models, one per YAML section.

Each model forbids unknown keys and checks what one section can check on its
own (ranges, URL form, an engine's GPUs). Reading the file, `${VAR}`
expansion, error messages and the checks across sections (an agent's
endpoint exists, `min_ok` is reachable) are `loading.py`'s.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from moa_local.config.deployment import ComposeConfig, K8sConfig
from moa_local.config.frozen import Frozen
from moa_local.paths import cache_root
from moa_local.urls import default_port

DEFAULT_BATCH_SHARE = 0.5  # gateway.batch_share
CONTINUING_ENGINES = frozenset({"vllm-cpu", "vllm"})  # serve.engine values that continue a final assistant message
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]*$"
Name = Annotated[str, Field(pattern=NAME_PATTERN)]


class CircuitConfig(Frozen):
    failures: int = Field(5, ge=1)  # consecutive failures that open the circuit
    cooldown_s: float = Field(30.0, gt=0)  # skipped this long, then probed again


class ServeConfig(Frozen):
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


class EndpointConfig(Frozen):
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
    # Whether the server continues a final assistant message (vLLM's `continue_final_message`), which the
    # aggregator's `start: staircase` needs; None = known from `serve.engine`, else unknown (taken as no).
    continues_final_message: bool | None = None

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

    @property
    def can_continue_final_message(self) -> bool:
        """`continues_final_message` if set; else True for the engines `serve` starts (vLLM's GPU and CPU builds
        take `continue_final_message` with `add_generation_prompt: false` on /v1/chat/completions); else False."""
        if self.continues_final_message is not None:
            return self.continues_final_message
        return self.serve is not None and self.serve.engine in CONTINUING_ENGINES

    def resolved_api_key(self) -> str:
        if self.api_key:
            return self.api_key
        if self.api_key_env:
            return os.environ.get(self.api_key_env, "")
        return ""

    @property
    def port(self) -> int:
        return default_port(self.base_url)


class SamplingConfig(Frozen):
    endpoint: str
    temperature: float = Field(0.7, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    max_tokens: int = Field(512, ge=1)
    system_prompt: str | None = None


class AgentConfig(SamplingConfig):
    n: int = Field(1, ge=1, le=16)  # samples in one request (Self-MoA)


AggregatorStart = Literal["after_layers", "early", "staircase"]


class AggregatorConfig(SamplingConfig):
    # When the aggregator starts (mixture/staircase.py): once the last layer is done (the paper's MoA); once every
    # live sample of the last layer has streamed `chunk_tokens` tokens, the rest of each proposal then cancelled
    # (early); or then already, in steps that take in the proposals as they keep streaming (staircase). Earlier
    # layers always run whole. `max_tokens` caps the answer across all steps.
    start: AggregatorStart = "after_layers"
    chunk_tokens: int = Field(32, ge=1)  # early, staircase: tokens (streamed pieces) of each live sample first
    step_tokens: int = Field(64, ge=1)  # staircase: aggregator tokens per step before it takes in newer chunks
    # early, staircase: or start this long after the last layer started, once min_ok samples have some text
    start_after_s: float | None = Field(None, gt=0)


class LayerConfig(Frozen):
    agents: tuple[AgentConfig, ...] = Field(min_length=1)
    min_ok: int = Field(1, ge=1)
    deadline_s: float | None = Field(None, gt=0)

    @property
    def samples(self) -> int:
        return sum(agent.n for agent in self.agents)


class MixtureConfig(Frozen):
    layers: tuple[LayerConfig, ...] = Field(min_length=1)
    aggregator: AggregatorConfig
    reference_prompt: str | None = None
    timeout_s: float = Field(600.0, gt=0)  # cap on the whole request
    description: str | None = None


class GatewayConfig(Frozen):
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


class Config(Frozen):
    endpoints: dict[Name, EndpointConfig] = Field(min_length=1)
    mixtures: dict[Name, MixtureConfig] = Field(default_factory=dict)
    gateway: GatewayConfig = GatewayConfig()
    compose: ComposeConfig = ComposeConfig()
    k8s: K8sConfig = K8sConfig()

    def model_names(self) -> list[str]:
        return [*self.mixtures, *self.endpoints]
