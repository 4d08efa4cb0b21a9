"""The models a config offers, and the run spec behind each name.

Every mixture and every endpoint of a config is a model: a mixture runs its
layers and aggregator, an endpoint is a plain pass-through (the baseline of
every comparison). `run_spec` is the one place that turns a model name and
a request's overrides into what the pipeline runs; the gateway, `ask` and
the batch runner all go through it.
"""

from __future__ import annotations

from typing import Literal

from moa_local.config import Config
from moa_local.errors import ModelNotFound
from moa_local.mixture.spec import Overrides, RunSpec

ModelKind = Literal["mixture", "endpoint"]
UNKNOWN = "unknown"  # the metric label of a request that names no configured model


def model_kind(config: Config, name: str) -> ModelKind | None:
    if name in config.mixtures:
        return "mixture"
    if name in config.endpoints:
        return "endpoint"
    return None


def model_label(config: Config, name: object) -> str:
    """`name` if it is a configured model, else "unknown": metric labels take config names only."""
    return name if isinstance(name, str) and model_kind(config, name) is not None else UNKNOWN


def run_spec(config: Config, name: str | None, overrides: Overrides | None = None) -> RunSpec:
    """The run spec of a model name; None means the config's first mixture."""
    if name is None:
        if not config.mixtures:
            raise ModelNotFound("the config defines no mixtures; name an endpoint instead", param="model")
        name = next(iter(config.mixtures))
    mixture = config.mixtures.get(name)
    if mixture is not None:
        return RunSpec.for_mixture(name, mixture, overrides or Overrides())
    endpoint = config.endpoints.get(name)
    if endpoint is not None:
        return RunSpec.passthrough(name, overrides or Overrides(), endpoint.timeout_s)
    raise ModelNotFound(not_found_message(config, name), param="model")


def not_found_message(config: Config, name: str) -> str:
    return f"no mixture or endpoint '{name}' (known: {', '.join(config.model_names())})"
