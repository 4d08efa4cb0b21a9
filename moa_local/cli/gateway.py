"""The gateway's commands: `serve` it, `check` its config and endpoints, watch it with `top`."""

from __future__ import annotations

import asyncio
import contextlib

import click

from moa_local.cli.main import CONFIG_OPTION, main


@main.command()
@CONFIG_OPTION
def check(config_path: str) -> None:
    """Validate the config and probe every endpoint: does it answer, which model does it serve?"""
    from moa_local.config import load_config
    from moa_local.engines.prober import probe_endpoints

    config = load_config(config_path)
    click.echo(f"{config_path}: valid ({len(config.endpoints)} endpoints, {len(config.mixtures)} mixtures)")
    prober = asyncio.run(probe_endpoints(config, timeout_s=30))
    width = max(len(name) for name in config.endpoints)
    for name, endpoint in config.endpoints.items():
        if prober.up.get(name):
            click.echo(f"  {name:<{width}}  up    {endpoint.base_url} serves {endpoint.model}")
        else:
            click.echo(f"  {name:<{width}}  DOWN  {endpoint.base_url}: {prober.reasons.get(name) or 'no answer'}")
    for name, ready in prober.readiness().items():
        click.echo(f"  mixture {name}: {'can reach its quorum' if ready else 'CANNOT reach its quorum'}")
    if not all(prober.up.get(name) for name in config.endpoints):
        raise click.ClickException("some endpoints are down (see above)")


@main.command()
@CONFIG_OPTION
@click.option("--host", default=None, help="Bind address (default: gateway.host, 127.0.0.1).")
@click.option("--port", type=click.IntRange(0, 65535), default=None, help="Port (default: gateway.port).")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]))  # fmt: skip
@click.option("--log-content", is_flag=True, help="Debug: log each request's prompt and answer text.")
def serve(config_path: str, host: str | None, port: int | None, log_level: str, log_content: bool) -> None:
    """Serve every mixture and endpoint as a model over the OpenAI API."""
    from moa_local.api.server import run_gateway
    from moa_local.config import load_config

    run_gateway(load_config(config_path), host=host, port=port, log_level=log_level, log_content=log_content)


@main.command()
@click.option("--url", default="http://127.0.0.1:8080", show_default=True, help="The gateway's base URL.")
@click.option("--interval", "interval_s", type=click.FloatRange(min=0.1), default=2.0, show_default=True,
              help="Seconds between two reads of /metrics.")  # fmt: skip
@click.option("--once", is_flag=True, help="Print one table after one interval and exit.")
@click.option("--api-key", envvar="MOA_API_KEY", default=None, help="A gateway key, when it requires one.")
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=0.1), default=5.0, show_default=True,
              help="Seconds to wait for /metrics.")  # fmt: skip
def top(url: str, interval_s: float, once: bool, api_key: str | None, timeout_s: float) -> None:
    """Per endpoint: calls/s, median latency, tokens/s and errors, from the gateway's /metrics."""
    from moa_local.cli.top import run

    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how one leaves the live table
        run(url, interval_s=interval_s, once=once, api_key=api_key, timeout_s=timeout_s)
