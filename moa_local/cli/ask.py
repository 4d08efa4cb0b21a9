"""One question to a mixture from the terminal: the engine of `moa-local ask`.

Runs the same pipeline as the gateway over an endpoint pool opened for the
call; the answer streams to stdout, proposals (on request) to stderr as
they arrive, or everything as one JSON object.
"""

from __future__ import annotations

import json
import sys
from contextlib import aclosing
from typing import Any, TextIO

from rich.console import Console
from rich.panel import Panel

from moa_local.config import Config
from moa_local.engines.pool import EndpointPool
from moa_local.metrics import Metrics
from moa_local.mixture.events import Done, LayerDone, Proposal, Token
from moa_local.mixture.pipeline import Pipeline
from moa_local.mixture.spec import RunSpec
from moa_local.mixture.trace import AgentTrace


async def ask(
    config: Config,
    spec: RunSpec,
    prompt: str,
    *,
    show_proposals: bool = False,
    as_json: bool = False,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> dict[str, Any]:
    # The streams are looked up per call, not bound at import: callers may redirect them.
    out = sys.stdout if out is None else out
    console = Console(file=sys.stderr if err is None else err, highlight=False)
    proposals: list[dict[str, Any]] = []
    async with EndpointPool(config.endpoints, Metrics()) as pool:
        events = Pipeline(pool, Metrics()).run(spec, [{"role": "user", "content": prompt}])
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
