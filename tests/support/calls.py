"""One engine call gathered whole, for tests: the texts and finish reasons of a streamed `Endpoint` call.

The gateway never needs a whole answer from an endpoint (it streams), so
this lives with the tests rather than in `moa_local/engines/`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from moa_local.engines.endpoint import Endpoint
from moa_local.mixture.spec import Sampling
from moa_local.mixture.trace import AgentTrace


@dataclass
class CallAnswer:
    texts: list[str]
    finish_reasons: list[str | None]


async def complete(
    endpoint: Endpoint, messages: list[dict[str, Any]], sampling: Sampling, trace: AgentTrace
) -> CallAnswer:
    """Stream one call to `endpoint` and join each choice's text; `trace` is filled as for any call."""
    parts: list[list[str]] = [[] for _ in range(sampling.n)]
    async for index, delta in endpoint.stream(messages, sampling, trace):
        if index < len(parts):
            parts[index].append(delta)
    return CallAnswer(["".join(p) for p in parts], list(trace.finish_reasons))
