"""The YAML config: frozen typed models, validated once at load.

`load_config(path)` reads the file, expands `${VAR}` in string values,
validates every key, checks cross-references (an agent's endpoint exists,
`min_ok` is reachable, names do not collide) and raises `ConfigError` whose
message names the file, the dotted key path and the bad value. Nothing after
load reads raw dicts.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from moa_local.errors import ConfigError
from moa_local.urls import default_port

DEFAULT_BATCH_SHARE = 0.5  # gateway.batch_share
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]*$"
Name = Annotated[str, Field(pattern=NAME_PATTERN)]
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")  # ${VAR} or ${VAR:-default}


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
        return self

    @property
    def tensor_parallel(self) -> int:
        return max(1, len(self.gpus))


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
    probe_interval_s: float = Field(10.0, gt=0)
    log_content: bool = False  # log prompt and answer text (debug only)
    # At most this share of each endpoint's max_concurrency is held by batch calls (at least one slot).
    batch_share: float = Field(DEFAULT_BATCH_SHARE, gt=0, le=1)


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


class Config(_Frozen):
    endpoints: dict[Name, EndpointConfig] = Field(min_length=1)
    mixtures: dict[Name, MixtureConfig] = {}
    gateway: GatewayConfig = GatewayConfig()
    compose: ComposeConfig = ComposeConfig()

    def model_names(self) -> list[str]:
        return [*self.mixtures, *self.endpoints]


def load_config(path: str | Path) -> Config:
    """Read, expand and validate a config file; every error names file and key path."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{source}: file not found") from None
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read ({exc.strerror})") from None
    return parse_config(text, source)


def load_mixture(path: str | Path, name: str) -> tuple[Config, MixtureConfig]:
    """A config and one of its mixtures; a name it does not define is an error naming the ones it does."""
    config = load_config(path)
    mixture = config.mixtures.get(name)
    if mixture is None:
        raise ConfigError(f"{path}: no mixture '{name}' (known: {', '.join(config.mixtures)})")
    return config, mixture


def parse_config(text: str, source: str = "<config>") -> Config:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{source}: invalid YAML{where}: {problem}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping with 'endpoints' (got {type(raw).__name__})")
    expanded = _expand_env(raw, (), source)
    try:
        config = Config.model_validate(expanded)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, expanded, source)) from None
    _check_references(config, source)
    return config


def _expand_env(value: Any, path: tuple[str, ...], source: str) -> Any:
    if isinstance(value, dict):
        return {key: _expand_env(item, (*path, str(key)), source) for key, item in value.items()}
    if isinstance(value, list):
        return [_expand_env(item, (*path, str(i)), source) for i, item in enumerate(value)]
    if isinstance(value, str):

        def substitute(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if os.environ.get(name):
                return os.environ[name]
            if default is not None:
                return default
            raise ConfigError(f"{source}: {'.'.join(path)}: environment variable {name} is not set")

        return _ENV_REF.sub(substitute, value)
    return value


def _describe(exc: ValidationError, raw: Mapping[str, Any], source: str) -> str:
    lines = []
    errors = exc.errors()
    for error in errors:
        loc = ".".join(str(part) for part in error["loc"])
        if error["type"] == "too_short" and any(
            len(other["loc"]) > len(error["loc"]) and other["loc"][: len(error["loc"])] == error["loc"]
            for other in errors
        ):
            continue  # only a consequence of an error inside this list
        if error["type"] == "extra_forbidden":
            allowed = _allowed_keys(error["loc"][:-1])
            hint = f" (allowed: {', '.join(allowed)})" if allowed else ""
            lines.append(f"{source}: {loc}: unknown key{hint}")
            continue
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "missing":
            lines.append(f"{source}: {loc}: required key is missing")
        else:
            lines.append(f"{source}: {loc}: {message} (got {error['input']!r})")
    return "\n".join(lines)


def _allowed_keys(loc: tuple[int | str, ...]) -> list[str]:
    """Walk the model classes along `loc` to list the keys allowed there."""
    model: Any = Config
    skip_key = False  # the previous field was a mapping or list: this part is its key
    for part in loc:
        if skip_key or isinstance(part, int):
            skip_key = False
            continue
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return []
        field = model.model_fields.get(str(part))
        if field is None:
            return []
        origin = getattr(field.annotation, "__origin__", None)
        skip_key = origin in (dict, tuple, list)
        model = _innermost_model(field.annotation)
        if model is None:
            return []
    if isinstance(model, type) and issubclass(model, BaseModel):
        return sorted(model.model_fields)
    return []


def _innermost_model(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _innermost_model(arg)
        if found is not None:
            return found
    return None


def _check_references(config: Config, source: str) -> None:
    known = ", ".join(sorted(config.endpoints))
    problems: list[str] = []
    for name in config.mixtures:
        if name in config.endpoints:
            problems.append(f"mixtures.{name}: name '{name}' is also an endpoint name; model names must be unique")
    for mixture_name, mixture in config.mixtures.items():
        base = f"mixtures.{mixture_name}"
        for i, layer in enumerate(mixture.layers):
            for j, agent in enumerate(layer.agents):
                if agent.endpoint not in config.endpoints:
                    problems.append(
                        f"{base}.layers.{i}.agents.{j}.endpoint: unknown endpoint '{agent.endpoint}' (known: {known})"
                    )
            if layer.min_ok > layer.samples:
                problems.append(
                    f"{base}.layers.{i}.min_ok: {layer.min_ok} is more than the layer's {layer.samples} samples"
                )
        if mixture.aggregator.endpoint not in config.endpoints:
            problems.append(
                f"{base}.aggregator.endpoint: unknown endpoint '{mixture.aggregator.endpoint}' (known: {known})"
            )
    for name, endpoint in config.endpoints.items():
        if endpoint.api_key_env and endpoint.api_key:
            problems.append(f"endpoints.{name}: set either api_key or api_key_env, not both")
    if problems:
        raise ConfigError("\n".join(f"{source}: {problem}" for problem in problems))
