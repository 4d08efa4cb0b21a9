"""The YAML config: frozen typed models, validated once at load.

The package face: import from `moa_local.config`, not from its modules.
`schema.py` holds the models (`deployment.py` the compose and k8s sections), `loading.py` reads a file into them (YAML,
`${VAR}` expansion, errors naming file, key path and value, cross-reference
checks). Nothing after load reads raw dicts.
"""

from moa_local.config.deployment import K8S_NAME_PATTERN, ComposeConfig, K8sConfig, K8sStorageConfig
from moa_local.config.loading import load_config, load_mixture, parse_config
from moa_local.config.schema import (
    DEFAULT_BATCH_SHARE,
    NAME_PATTERN,
    AgentConfig,
    AggregatorConfig,
    CircuitConfig,
    Config,
    EndpointConfig,
    GatewayConfig,
    LayerConfig,
    MixtureConfig,
    Name,
    SamplingConfig,
    ServeConfig,
)

__all__ = [
    "DEFAULT_BATCH_SHARE",
    "K8S_NAME_PATTERN",
    "NAME_PATTERN",
    "AgentConfig",
    "AggregatorConfig",
    "CircuitConfig",
    "ComposeConfig",
    "Config",
    "EndpointConfig",
    "GatewayConfig",
    "K8sConfig",
    "K8sStorageConfig",
    "LayerConfig",
    "MixtureConfig",
    "Name",
    "SamplingConfig",
    "ServeConfig",
    "load_config",
    "load_mixture",
    "parse_config",
]
