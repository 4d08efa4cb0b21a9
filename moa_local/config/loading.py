"""Reading a config file: YAML, `${VAR}` expansion, validation, cross-references.

`load_config(path)` reads the file, expands `${VAR}` and `${VAR:-default}`
in every string value (an unset variable without a default is an error),
validates every key, checks cross-references (an agent's endpoint exists,
`min_ok` is reachable, names do not collide, a `staircase` aggregator's
endpoint continues a final assistant message) and raises `ConfigError` whose
message names the file, the dotted key path and the bad value. Nothing after
load reads raw dicts. The models themselves are `schema.py`'s.

`$${` is a literal `${` (as in Docker Compose), for prompt text that must
contain one: `system_prompt: "fill in $${name}"` gives `fill in ${name}`.
Any other `$` is left as it is.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from moa_local.config.schema import Config, EndpointConfig, MixtureConfig
from moa_local.errors import ConfigError

# $${ (a literal "${"), or ${VAR} or ${VAR:-default}
_ENV_REF = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


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
            if name is None:
                return "${"  # the escape $${
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
        aggregator = config.endpoints.get(mixture.aggregator.endpoint)
        if aggregator is None:
            problems.append(
                f"{base}.aggregator.endpoint: unknown endpoint '{mixture.aggregator.endpoint}' (known: {known})"
            )
        elif mixture.aggregator.start == "staircase" and not aggregator.can_continue_final_message:
            problems.append(_no_continuation(base, mixture.aggregator.endpoint, aggregator))
    for name, endpoint in config.endpoints.items():
        if endpoint.api_key_env and endpoint.api_key:
            problems.append(f"endpoints.{name}: set either api_key or api_key_env, not both")
    if problems:
        raise ConfigError("\n".join(f"{source}: {problem}" for problem in problems))


def _no_continuation(base: str, name: str, endpoint: EndpointConfig) -> str:
    """`start: staircase` on an aggregator endpoint that cannot continue its own answer: say why, and the fix."""
    head = f"{base}.aggregator.start: staircase needs an endpoint that continues a final assistant message"
    if endpoint.continues_final_message is False:
        return f"{head}; '{name}' does not (endpoints.{name}.continues_final_message is false)"
    return (
        f"{head}; '{name}' is not known to (set endpoints.{name}.continues_final_message: true if it is a vLLM server)"
    )
