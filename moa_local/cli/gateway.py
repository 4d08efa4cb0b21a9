"""The gateway's commands: `serve` it, `check` its config and endpoints, watch it with `top`."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

import click

from moa_local.cli.main import CONFIG_OPTION, main

if TYPE_CHECKING:
    from moa_local.config import EndpointConfig
    from moa_local.engines.continuation import ContinuationProbe


@main.command()
@CONFIG_OPTION
@click.option("--probe-continuation", "probe_all", is_flag=True,
              help="Probe every endpoint that is up for continuing a final assistant message "
                   "(default: only the aggregators of `start: staircase` mixtures).")  # fmt: skip
def check(config_path: str, probe_all: bool) -> None:
    """Validate the config and probe every endpoint: does it answer, which model does it serve?

    The aggregator endpoint of each `start: staircase` mixture (with --probe-continuation: every endpoint) that
    is up also gets one small call that asks it to continue a final assistant message; the check fails when a
    staircase mixture's aggregator does not.
    """
    from moa_local.config import load_config
    from moa_local.engines.continuation import probe_continuations
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
    problems = [] if all(prober.up.get(name) for name in config.endpoints) else ["some endpoints are down"]
    staircases = {
        name: m.aggregator.endpoint for name, m in config.mixtures.items() if m.aggregator.start == "staircase"
    }
    wanted = [n for n in config.endpoints if prober.up.get(n) and (probe_all or n in staircases.values())]
    probes = asyncio.run(probe_continuations(config, wanted)) if wanted else {}
    for name, probe in probes.items():
        users = [mixture for mixture, aggregator in staircases.items() if aggregator == name]
        line, broken = _continuation_line(name, config.endpoints[name], probe, users)
        click.echo(line)
        if broken:
            problems.append(
                f"{name} does not continue a final assistant message, as start: staircase needs ({', '.join(users)})"
            )
    if problems:
        raise click.ClickException("; ".join(problems) + " (see above)")


def _continuation_line(
    name: str, endpoint: EndpointConfig, probe: ContinuationProbe, staircases: list[str]
) -> tuple[str, bool]:
    """One endpoint's continuation probe as a line, and whether it breaks a staircase mixture."""
    if probe.verdict == "error":
        found = f"ERROR probing whether it continues a final assistant message: {probe.reason}"
    else:
        answered = f"(it answered {probe.text[:60]!r})"
        found = {
            "continues": f"continues a final assistant message {answered}",
            "restarts": f"RESTARTS instead of continuing a final assistant message {answered}",
            "unclear": f"UNCLEAR whether it continues a final assistant message {answered}",
        }[probe.verdict]
    line = f"  continuation {name}: {found}"
    declared = endpoint.continues_final_message
    if probe.verdict == "continues":
        if declared is None and not endpoint.can_continue_final_message:
            line += f"; the config does not know it: set endpoints.{name}.continues_final_message: true"
        elif declared is False:
            line += f"; the config says it cannot (endpoints.{name}.continues_final_message: false)"
        return line, False
    if endpoint.can_continue_final_message:
        basis = f"serve.engine {endpoint.serve.engine}" if declared is None and endpoint.serve else "declared true"
        line += f"; MISMATCH: the config takes it as able (continues_final_message: {basis})"
    if len(staircases) == 1:
        line += f"; mixture {staircases[0]} uses start: staircase on it"
    elif staircases:
        line += f"; mixtures {', '.join(staircases)} use start: staircase on it"
    return line, bool(staircases)


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
