"""The error of a layer that ends below its quorum: 504 when a deadline cut agents off, else 503.

It names each agent that did not answer and why, from the layer's trace.
"""

from __future__ import annotations

from moa_local.errors import DeadlineError, QuorumError
from moa_local.mixture.trace import LayerTrace


def shortfall(model: str, layer: LayerTrace, needed: int) -> QuorumError | DeadlineError:
    reasons = "; ".join(
        f"{agent.endpoint}: {agent.status}" + (f" ({agent.error})" if agent.error else "")
        for agent in layer.agents
        if agent.status != "ok"
    )
    message = (
        f"{model}: layer {layer.index} got {layer.proposals_used} of the {needed} answers it needs"
        + (f" — {reasons}" if reasons else " (the agents answered with empty text)")
    )
    if any(agent.status == "late" for agent in layer.agents):
        return DeadlineError(message)
    return QuorumError(message)
