"""What one run of the pipeline does: its layers, its aggregator step, and each call's sampling.

A `RunSpec` is built once per request from the config and the request's
overrides (`catalog.run_spec` does that for any model name); the pipeline
then only reads it. Its `priority` says whose calls wait at a full endpoint:
a batch job's wait behind interactive requests'. `Sampling` is what one engine call asks for; the
engines turn it into the request body. `Aggregation` is when the aggregator starts (see staircase.py).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal

from moa_local.config import AgentConfig, LayerConfig, MixtureConfig, SamplingConfig
from moa_local.config.schema import AggregatorStart

PASSTHROUGH_BACKSTOP_S = 1.0
# Interactive calls are admitted at an endpoint before waiting batch calls (engines/admission.py).
Priority = Literal["interactive", "batch"]


@dataclass(frozen=True)
class Sampling:
    """What one call asks of the engine; None leaves the engine's default."""

    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    n: int = 1
    stop: str | tuple[str, ...] | None = None
    seed: int | None = None
    user: str | None = None
    # The messages end with an assistant message to continue (a staircase step after the first): vLLM's
    # chat-completions extras `continue_final_message` and `add_generation_prompt` say so.
    continue_final: bool = False

    def body(self) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_tokens": self.max_tokens,
            "stop": list(self.stop) if isinstance(self.stop, tuple) else self.stop,
            "seed": self.seed,
            "user": self.user,
        }
        if self.n != 1:
            fields["n"] = self.n
        if self.continue_final:
            fields["continue_final_message"] = True
            fields["add_generation_prompt"] = False
        return {key: value for key, value in fields.items() if value is not None}


@dataclass(frozen=True)
class Overrides:
    """Request values that replace the aggregator's configured sampling."""

    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    stop: str | tuple[str, ...] | None = None
    seed: int | None = None
    user: str | None = None


@dataclass(frozen=True)
class Step:
    endpoint: str
    sampling: Sampling
    system_prompt: str | None = None


@dataclass(frozen=True)
class Aggregation:
    """When the aggregator starts, from the aggregator's config (`start` and its knobs; see staircase.py)."""

    start: AggregatorStart = "after_layers"
    chunk_tokens: int = 32
    step_tokens: int = 64
    start_after_s: float | None = None


@dataclass(frozen=True)
class RunSpec:
    """What the pipeline runs for one model name.

    `timeout_s` caps the request from its start. A pass-through's call has
    a timeout of its own that counts from the call's admission (a 502 naming
    the endpoint when it fires); `admitted_cap_s` (that timeout plus a
    backstop) then bounds it from no earlier than the admission, so time in
    the endpoint's queue cannot make the backstop fire first. None for a
    mixture: its cap holds throughout.
    """

    model: str
    layers: tuple[LayerConfig, ...]
    aggregator: Step
    reference_prompt: str | None = None
    timeout_s: float = 600.0
    admitted_cap_s: float | None = None
    priority: Priority = "interactive"
    aggregation: Aggregation = Aggregation()

    @classmethod
    def for_mixture(cls, name: str, mixture: MixtureConfig, overrides: Overrides = Overrides()) -> RunSpec:
        agg = mixture.aggregator
        sampling = sampling_of(agg)
        sampling = replace(
            sampling,
            temperature=_pick(overrides.temperature, sampling.temperature),
            top_p=_pick(overrides.top_p, sampling.top_p),
            max_tokens=_pick(overrides.max_tokens, sampling.max_tokens),
            stop=overrides.stop,
            seed=overrides.seed,
            user=overrides.user,
        )
        step = Step(agg.endpoint, sampling, agg.system_prompt)
        aggregation = Aggregation(agg.start, agg.chunk_tokens, agg.step_tokens, agg.start_after_s)
        return cls(name, mixture.layers, step, mixture.reference_prompt, mixture.timeout_s, aggregation=aggregation)

    @classmethod
    def passthrough(
        cls, endpoint: str, overrides: Overrides, timeout_s: float, backstop_s: float = PASSTHROUGH_BACKSTOP_S
    ) -> RunSpec:
        """One call to `endpoint`, whose `timeout_s` (from its admission) ends it; the caps are backstops.

        The wait for a slot is capped at `timeout_s + backstop_s` from the
        request's start, the call once admitted at as much again.
        """
        sampling = Sampling(
            overrides.temperature, overrides.top_p, overrides.max_tokens, 1,
            overrides.stop, overrides.seed, overrides.user,
        )  # fmt: skip
        cap = timeout_s + backstop_s
        return cls(endpoint, (), Step(endpoint, sampling), None, cap, admitted_cap_s=cap)


def sampling_of(config: SamplingConfig) -> Sampling:
    n = config.n if isinstance(config, AgentConfig) else 1
    return Sampling(temperature=config.temperature, top_p=config.top_p, max_tokens=config.max_tokens, n=n)


def _pick(value: Any, default: Any) -> Any:
    return default if value is None else value
