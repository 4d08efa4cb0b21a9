"""What happened inside one request: per layer, per agent.

Filled in while the request runs and returned with its answer (the `moa`
object of the HTTP API). Holds timings, token counts, statuses and error
reasons; never prompt or answer text.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

# Agent statuses: ok, error, timeout, late (cut off by the layer deadline),
# skipped (circuit open), cancelled (the request went away), cut (a streamed
# proposal the aggregator no longer needed: early aggregation started, or the
# answer ended first; its note says which).


@dataclass
class AgentTrace:
    endpoint: str
    role: str  # proposer | aggregator
    samples: int = 1
    status: str = "pending"
    latency_s: float = 0.0
    ttft_s: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    attempts: int = 0
    error: str | None = None
    note: str | None = None  # e.g. references trimmed to fit the context window
    finish_reasons: list[str | None] = field(default_factory=list)


@dataclass
class LayerTrace:
    index: int
    agents: list[AgentTrace] = field(default_factory=list)
    duration_s: float = 0.0
    proposals_used: int = 0

    @property
    def critical_s(self) -> float:
        """The layer waited for its slowest agent, whatever that agent's fate."""
        return max((agent.latency_s for agent in self.agents), default=0.0)


@dataclass
class StepTrace:
    """One aggregator call of an early or staircase start (see staircase.py).

    `at_s` is when it started, from the start of the layer it aggregates;
    `reference_tokens` the tokens each proposal (agent order, then sample)
    had streamed by then, counted as streamed pieces.
    """

    index: int
    at_s: float
    reference_tokens: list[int]
    status: str = "pending"
    latency_s: float = 0.0
    ttft_s: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def add(self, agent: AgentTrace) -> None:
        self.prompt_tokens += agent.prompt_tokens
        self.completion_tokens += agent.completion_tokens

    def as_openai(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
        }


@dataclass
class RequestTrace:
    model: str
    layers: list[LayerTrace] = field(default_factory=list)
    aggregator: AgentTrace | None = None
    duration_s: float = 0.0
    ttft_s: float | None = None
    start: str = "after_layers"  # when the aggregator started: after_layers, early, staircase
    steps: list[StepTrace] = field(default_factory=list)  # early, staircase: the aggregator's calls

    @property
    def critical_path_s(self) -> float:
        """The slowest agent of each layer, then the aggregator (the sum of its steps' calls).

        With steps the aggregator overlaps the last layer: that layer counts
        only until the first step started.
        """
        aggregator = self.aggregator.latency_s if self.aggregator else 0.0
        if self.steps and self.layers:
            return sum(layer.critical_s for layer in self.layers[:-1]) + self.steps[0].at_s + aggregator
        return sum(layer.critical_s for layer in self.layers) + aggregator

    @property
    def overhead_s(self) -> float:
        return max(0.0, self.duration_s - self.critical_path_s)

    def usage(self) -> Usage:
        usage = Usage()
        for layer in self.layers:
            for agent in layer.agents:
                usage.add(agent)
        if self.aggregator:
            usage.add(self.aggregator)
        return usage

    def proposals_per_layer(self) -> list[int]:
        return [layer.proposals_used for layer in self.layers]

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "duration_s": round(self.duration_s, 6),
            "ttft_s": None if self.ttft_s is None else round(self.ttft_s, 6),
            "overhead_s": round(self.overhead_s, 6),
            "layers": [
                {
                    "index": layer.index,
                    "duration_s": round(layer.duration_s, 6),
                    "proposals_used": layer.proposals_used,
                    "agents": [_agent_dict(agent) for agent in layer.agents],
                }
                for layer in self.layers
            ],
            "aggregator": _agent_dict(self.aggregator) if self.aggregator else None,
            "start": self.start,
            "steps": [_step_dict(step) for step in self.steps],
            "usage": self.usage().as_openai(),
        }


def _agent_dict(agent: AgentTrace) -> dict[str, Any]:
    data = asdict(agent)
    data["latency_s"] = round(agent.latency_s, 6)
    if agent.ttft_s is not None:
        data["ttft_s"] = round(agent.ttft_s, 6)
    return data


def _step_dict(step: StepTrace) -> dict[str, Any]:
    data = asdict(step)
    data["at_s"] = round(step.at_s, 6)
    data["latency_s"] = round(step.latency_s, 6)
    if step.ttft_s is not None:
        data["ttft_s"] = round(step.ttft_s, 6)
    return data
