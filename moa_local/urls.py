"""The URLs of one OpenAI-compatible server, from any of the ones a user may give.

A server (the gateway or a vLLM engine) has its API under `/v1` and its
`/health` and `/metrics` at the root beside it. Users and configs name it by
its root (`http://h:p`), its API base (`http://h:p/v1`, what `base_url`
holds) or, for metrics, the `/metrics` URL itself; these functions accept
all of them. A server mounted under a path prefix keeps the prefix.
"""

from __future__ import annotations

from ipaddress import ip_address
from urllib.parse import urlsplit


def server_root(url: str) -> str:
    """`http://h:p/v1`, `http://h:p/`, `http://h:p/metrics` -> `http://h:p`."""
    return url.rstrip("/").removesuffix("/metrics").removesuffix("/v1")


def api_base(url: str) -> str:
    """`http://h:p`, `http://h:p/` and `http://h:p/v1` all mean `http://h:p/v1`."""
    return f"{server_root(url)}/v1"


def metrics_url(url: str) -> str:
    """Accept a server's root, its /v1 URL, or the /metrics URL itself."""
    return f"{server_root(url)}/metrics"


def health_url(url: str) -> str:
    return f"{server_root(url)}/health"


def metrics_path(url: str) -> str:
    """The path of the server's /metrics (what a Prometheus target needs beside host:port)."""
    return urlsplit(metrics_url(url)).path


def default_port(url: str) -> int:
    """The URL's port, or its scheme's default."""
    parts = urlsplit(url)
    return parts.port or (443 if parts.scheme == "https" else 80)


def is_ip(host: str) -> bool:
    """Whether `host` is an IP address (v4 or v6) rather than a name."""
    try:
        ip_address(host)
    except ValueError:
        return False
    return True


def is_loopback(host: str) -> bool:
    """`localhost` or a loopback address: the machine (or container, or pod) itself."""
    return host == "localhost" or (is_ip(host) and ip_address(host).is_loopback)
