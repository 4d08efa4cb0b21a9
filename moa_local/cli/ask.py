"""`moa-local ask`: one question to a mixture from the terminal.

Runs the same pipeline as the gateway over an endpoint pool opened for the
call; the answer streams to stdout, proposals (on request) to stderr as
rich panels as they arrive, or everything as one JSON object. Resolving the
model and running the pipeline are the library's; this module only renders.
"""

from __future__ import annotations

import asyncio
import json
import sys
from contextlib import aclosing
from typing import TYPE_CHECKING, Any, TextIO

import click

from moa_local.cli.main import CONFIG_OPTION, main

if TYPE_CHECKING:
    from rich.console import Console

    from moa_local.config import Config
    from moa_local.metrics import Metrics
    from moa_local.mixture.events import Done, Proposal
    from moa_local.mixture.spec import RunSpec
    from moa_local.mixture.trace import AgentTrace


@main.command()
@CONFIG_OPTION
@click.option("--mixture", "model", default=None, help="Mixture (or endpoint) to ask; default: the first mixture.")
@click.option("--show-proposals", is_flag=True, help="Show each layer's answers on stderr as they arrive.")
@click.option("--json", "as_json", is_flag=True, help="Print answer, usage, proposals and trace as one JSON object.")
@click.option("--max-tokens", type=click.IntRange(min=1), default=None, help="The aggregator's max_tokens.")
@click.option("--temperature", type=click.FloatRange(0, 2), default=None, help="The aggregator's temperature.")
@click.argument("prompt")
def ask(
    config_path: str, model: str | None, show_proposals: bool, as_json: bool,
    max_tokens: int | None, temperature: float | None, prompt: str,
) -> None:  # fmt: skip
    """Ask a mixture one question and stream its answer."""
    from moa_local.config import load_config
    from moa_local.mixture.catalog import run_spec
    from moa_local.mixture.spec import Overrides

    config = load_config(config_path)
    try:
        spec = run_spec(config, model, Overrides(temperature=temperature, max_tokens=max_tokens))
        asyncio.run(answer(config, spec, prompt, show_proposals=show_proposals, as_json=as_json))
    except KeyboardInterrupt:
        raise click.exceptions.Exit(130) from None


async def answer(
    config: Config,
    spec: RunSpec,
    prompt: str,
    *,
    show_proposals: bool = False,
    as_json: bool = False,
    out: TextIO | None = None,
    err: TextIO | None = None,
    metrics: Metrics | None = None,
) -> dict[str, Any]:
    """Run `spec` on `prompt` and render it; the result is what `--json` prints.

    Pool and pipeline record into one registry, `metrics` (a fresh one by default).
    """
    # Imported here, not at the top: every command loads this module, and the pool brings the openai SDK.
    from rich.console import Console

    from moa_local.engines.pool import EndpointPool
    from moa_local.metrics import Metrics
    from moa_local.mixture.events import Done, LayerDone, Proposal, Token
    from moa_local.mixture.pipeline import Pipeline

    # The streams are looked up per call, not bound at import: callers may redirect them.
    out = sys.stdout if out is None else out
    console = Console(file=sys.stderr if err is None else err, highlight=False)
    proposals: list[dict[str, Any]] = []
    metrics = Metrics() if metrics is None else metrics
    async with EndpointPool(config.endpoints, metrics) as pool:
        events = Pipeline(pool, metrics).run(spec, [{"role": "user", "content": prompt}])
        async with aclosing(events):
            async for event in events:
                if isinstance(event, Proposal):
                    proposals.append({"layer": event.layer, "endpoint": event.agent.endpoint, "texts": event.texts})
                    if show_proposals and not as_json:
                        _show_proposal(console, event)
                elif isinstance(event, LayerDone) and show_proposals and not as_json:
                    console.rule(f"layer {event.layer.index}: {event.layer.proposals_used} answers passed on "
                                 f"({event.layer.duration_s:.1f}s)")  # fmt: skip
                elif isinstance(event, Token) and not as_json:
                    out.write(event.text)
                    out.flush()
                elif isinstance(event, Done):
                    result = {
                        "model": spec.model,
                        "answer": event.answer,
                        "finish_reason": event.finish_reason,
                        "usage": event.trace.usage().as_openai(),
                        "proposals": proposals,
                        "trace": event.trace.as_dict(),
                    }
                    if as_json:
                        out.write(json.dumps(result, indent=2) + "\n")
                    else:
                        out.write("\n")
                        if show_proposals:
                            _summary(console, event)
                    return result
    raise AssertionError("the pipeline ended without an answer")


def _show_proposal(console: Console, event: Proposal) -> None:
    from rich.panel import Panel

    agent = event.agent
    title = f"layer {event.layer} · {agent.endpoint} · {_status(agent)}"
    body = "\n\n---\n\n".join(event.texts) if event.texts else f"[red]{agent.error or agent.status}[/red]"
    console.print(Panel(body, title=title, title_align="left", border_style="cyan" if event.texts else "red"))


def _status(agent: AgentTrace) -> str:
    parts = [agent.status, f"{agent.latency_s:.1f}s"]
    if agent.completion_tokens:
        parts.append(f"{agent.completion_tokens} tokens")
    if agent.samples > 1:
        parts.append(f"n={agent.samples}")
    return ", ".join(parts)


def _summary(console: Console, done: Done) -> None:
    usage = done.trace.usage()
    agg = done.trace.aggregator
    ttft = f"{done.trace.ttft_s:.1f}s" if done.trace.ttft_s is not None else "-"
    console.print(
        f"[dim]aggregator {agg.endpoint if agg else '-'}: first token after {ttft}, "
        f"done in {done.trace.duration_s:.1f}s; {usage.prompt_tokens} prompt + "
        f"{usage.completion_tokens} completion tokens over all calls[/dim]"
    )
