"""What the pipeline yields while a request runs: proposals, finished layers, tokens, the answer."""

from __future__ import annotations

from dataclasses import dataclass, field

from moa_local.mixture.trace import AgentTrace, LayerTrace, RequestTrace


@dataclass(frozen=True)
class Proposal:
    layer: int
    agent: AgentTrace
    texts: list[str]


@dataclass(frozen=True)
class LayerDone:
    layer: LayerTrace


@dataclass(frozen=True)
class Token:
    text: str


@dataclass(frozen=True)
class Done:
    answer: str
    finish_reason: str | None
    trace: RequestTrace = field(repr=False)


Event = Proposal | LayerDone | Token | Done
