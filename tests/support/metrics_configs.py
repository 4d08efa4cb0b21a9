"""A small validated Config for the metrics tests: endpoints and mixtures by name only."""

from __future__ import annotations

import json

from moa_local.config import Config, parse_config


def small_config(endpoints: list[str], layers: dict[str, int]) -> Config:
    """Endpoints by name; mixtures by name with that many one-agent layers."""
    first = endpoints[0]
    raw = {
        "endpoints": {name: {"base_url": f"http://127.0.0.1:9/{name}/v1", "model": name} for name in endpoints},
        "mixtures": {
            name: {"layers": [{"agents": [{"endpoint": first}]}] * count, "aggregator": {"endpoint": first}}
            for name, count in layers.items()
        },
    }
    return parse_config(json.dumps(raw))
