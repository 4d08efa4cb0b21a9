"""Running the gateway under uvicorn (`moa-local serve`)."""

from __future__ import annotations

import logging
import os

import uvicorn

from moa_local.api.app import create_app
from moa_local.config import Config
from moa_local.urls import is_loopback

logger = logging.getLogger("moa_local.gateway")


def run_gateway(
    config: Config, *, host: str | None = None, port: int | None = None, log_level: str = "info",
    log_content: bool = False,
) -> None:  # fmt: skip
    if log_content:  # debug: prompt and answer text in the per-request log line
        config = config.model_copy(update={"gateway": config.gateway.model_copy(update={"log_content": True})})
    host = host or config.gateway.host
    port = config.gateway.port if port is None else port
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "httpx2", "openai"):  # one line per engine call or probe otherwise
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
    keys_env = config.gateway.api_keys_env
    if not (keys_env and os.environ.get(keys_env)) and not is_loopback(host):
        logger.warning(
            "listening on %s without API keys: anyone who can reach this address can use every model "
            "(set %s to require a key)", host, keys_env or "gateway.api_keys_env",
        )  # fmt: skip
    if config.gateway.log_content:
        logger.warning("logging prompt and answer text of every request (gateway.log_content)")
    uvicorn.run(
        create_app(config), host=host, port=port, log_level=log_level, access_log=False,
        timeout_graceful_shutdown=10,
    )  # fmt: skip
