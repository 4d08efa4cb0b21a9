"""Every Prometheus metric of moa-local, bound to one explicit registry.

Names, types and labels are the contract of DESIGN.md §5. Labels take only
config-defined values (mixture, endpoint, layer, role, outcome), never
prompt text or request ids. Histogram buckets follow vLLM's own so that
dashboards can put our figures next to the engines' (vLLM's TTFT and e2e
latency edges, checked against a live engine by the tests). Beyond the
contract: `moa_agent_retries_total`, `moa_circuit_open`,
`moa_gateway_inflight`, `moa_queued` (calls waiting for one of an
endpoint's `max_concurrency` slots; they count in `moa_inflight` too) and
`moa_quorum_misses_total` (layers below `min_ok`), and
`moa_aggregation_steps` (aggregator calls per answered request of a mixture
whose aggregator starts early or in staircase steps; agent outcome `cut` is
a streamed proposal such a start no longer needed). Batch jobs add
`moa_batch_requests_total{outcome}` (lines answered, failed, or rejected
as bad), `moa_batches{status}` (batches per OpenAI status) and
`moa_batch_queued` (batch calls among `moa_queued`); they are exported
only once `enable_batches` is called, by a process that runs batches, so
a gateway without them exports nothing it does not use. Requests naming no
configured model are counted under the model label "unknown". Building a
`Metrics` registers nothing globally: tests and apps each make their own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

if TYPE_CHECKING:
    from moa_local.config import Config

# vLLM's vllm:time_to_first_token_seconds buckets.
TTFT_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75,
    1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip
# vLLM's vllm:e2e_request_latency_seconds buckets.
LATENCY_BUCKETS = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0,
    40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0,
)  # fmt: skip
# Orchestration overhead is milliseconds, far below any engine latency.
OVERHEAD_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
PROPOSAL_BUCKETS = (0, 1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 24, 32)
STEP_BUCKETS = (1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 24, 32, 64)

REQUEST_OUTCOMES = ("ok", "error", "timeout", "cancelled", "rejected")
AGENT_OUTCOMES = ("ok", "error", "timeout", "late", "cancelled", "skipped", "cut")
AGENT_ROLES = ("proposer", "aggregator")
TOKEN_KINDS = ("prompt", "completion")
# A batch line: answered, failed (5xx), or rejected (a bad line, or a body the gateway refuses: 4xx).
BATCH_REQUEST_OUTCOMES = ("ok", "error", "rejected")
BATCH_STATUSES = (
    "validating", "failed", "in_progress", "finalizing", "completed", "expired", "cancelling", "cancelled",
)  # fmt: skip


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "moa_requests", "Requests answered, by model and outcome.", ["mixture", "outcome"], registry=r
        )
        self.request_duration = Histogram(
            "moa_request_duration_seconds", "Wall time of a request.", ["mixture"],
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.ttft = Histogram(
            "moa_time_to_first_token_seconds", "Request start to the first answer token.", ["mixture"],
            buckets=TTFT_BUCKETS, registry=r,
        )  # fmt: skip
        self.layer_duration = Histogram(
            "moa_layer_duration_seconds", "Wall time of one proposer layer.", ["mixture", "layer"],
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.overhead = Histogram(
            "moa_overhead_seconds",
            "Wall time minus the critical path (slowest counted agent per layer + aggregator).",
            ["mixture"], buckets=OVERHEAD_BUCKETS, registry=r,
        )  # fmt: skip
        self.agent_calls = Counter(
            "moa_agent_calls", "Engine calls, by endpoint, role and outcome.", ["endpoint", "role", "outcome"],
            registry=r,
        )  # fmt: skip
        self.agent_duration = Histogram(
            "moa_agent_duration_seconds", "Wall time of one engine call.", ["endpoint", "role"],
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.agent_ttft = Histogram(
            "moa_agent_time_to_first_token_seconds", "Time to the first token of a streamed engine call.",
            ["endpoint"], buckets=TTFT_BUCKETS, registry=r,
        )  # fmt: skip
        self.tokens = Counter("moa_tokens", "Tokens reported by the engines' usage.", ["endpoint", "kind"], registry=r)
        self.inflight = Gauge("moa_inflight", "Engine calls in flight from us.", ["endpoint"], registry=r)
        self.queued = Gauge(
            "moa_queued", "Engine calls of ours waiting for a slot (the endpoint's max_concurrency).", ["endpoint"],
            registry=r,
        )  # fmt: skip
        self.proposals_used = Histogram(
            "moa_proposals_used", "Answers a layer passed on.", ["mixture", "layer"],
            buckets=PROPOSAL_BUCKETS, registry=r,
        )  # fmt: skip
        self.endpoint_up = Gauge(
            "moa_endpoint_up", "1 when the endpoint's last health probe succeeded.", ["endpoint"], registry=r
        )
        self.retries = Counter("moa_agent_retries", "Engine calls retried.", ["endpoint"], registry=r)
        self.circuit_open = Gauge(
            "moa_circuit_open", "1 while the endpoint's circuit breaker skips it.", ["endpoint"], registry=r
        )
        self.gateway_inflight = Gauge("moa_gateway_inflight", "Requests in flight in the gateway.", registry=r)
        self.quorum_misses = Counter(
            "moa_quorum_misses", "Layers that ended with fewer answers than min_ok.", ["mixture", "layer"],
            registry=r,
        )  # fmt: skip
        self.aggregation_steps = Histogram(
            "moa_aggregation_steps", "Aggregator calls of an answer started early or in staircase steps.",
            ["mixture"], buckets=STEP_BUCKETS, registry=r,
        )  # fmt: skip
        # Registered by enable_batches (below).
        self.batch_requests = Counter(
            "moa_batch_requests", "Batch lines finished, by outcome (ok, error, rejected).", ["outcome"], registry=None
        )
        self.batches = Gauge("moa_batches", "Batches, by status.", ["status"], registry=None)
        self.batch_queued = Gauge(
            "moa_batch_queued", "Batch calls waiting for a slot (also counted in moa_queued).", ["endpoint"],
            registry=None,
        )  # fmt: skip
        self._batches_enabled = False

    def preset(self, config: Config) -> None:
        """Create the series of every configured name at zero.

        Without this a counter appears only on its first increment, so a rate
        or an error ratio has no series (rather than 0) until something
        happens. Models are the mixtures and the endpoints (pass-through).
        """
        endpoints = list(config.endpoints)
        layers = {name: len(mixture.layers) for name, mixture in config.mixtures.items()}
        for mixture, count in {**dict.fromkeys(endpoints, 0), **layers}.items():
            for outcome in REQUEST_OUTCOMES:
                self.requests.labels(mixture, outcome)
            self.request_duration.labels(mixture)
            self.ttft.labels(mixture)
            self.overhead.labels(mixture)
            if mixture in config.mixtures:  # any mixture's aggregator may be switched to steps
                self.aggregation_steps.labels(mixture)
            for layer in range(1, count + 1):
                self.quorum_misses.labels(mixture, str(layer))
                self.layer_duration.labels(mixture, str(layer))
                self.proposals_used.labels(mixture, str(layer))
        for endpoint in endpoints:
            for role in AGENT_ROLES:
                for outcome in AGENT_OUTCOMES:
                    self.agent_calls.labels(endpoint, role, outcome)
                self.agent_duration.labels(endpoint, role)
            for kind in TOKEN_KINDS:
                self.tokens.labels(endpoint, kind)
            self.agent_ttft.labels(endpoint)
            self.inflight.labels(endpoint)
            self.queued.labels(endpoint)
            self.batch_queued.labels(endpoint)
            self.retries.labels(endpoint)
            self.circuit_open.labels(endpoint)

    def enable_batches(self) -> None:
        """Export the batch families, every outcome and status at zero (endpoints' series come from `preset`)."""
        if self._batches_enabled:
            return
        self._batches_enabled = True
        for family in (self.batch_requests, self.batches, self.batch_queued):
            self.registry.register(family)
        for outcome in BATCH_REQUEST_OUTCOMES:
            self.batch_requests.labels(outcome)
        for status in BATCH_STATUSES:
            self.batches.labels(status)

    def observe_agent(
        self,
        endpoint: str,
        role: str,
        outcome: str,
        duration_s: float,
        ttft_s: float | None = None,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
    ) -> None:
        self.agent_calls.labels(endpoint, role, outcome).inc()
        if outcome != "skipped":  # never sent (circuit open): its ~0 s would drag the latency quantiles down
            self.agent_duration.labels(endpoint, role).observe(duration_s)
        if ttft_s is not None:
            self.agent_ttft.labels(endpoint).observe(ttft_s)
        if prompt_tokens:
            self.tokens.labels(endpoint, "prompt").inc(prompt_tokens)
        if completion_tokens:
            self.tokens.labels(endpoint, "completion").inc(completion_tokens)

    def observe_layer(
        self, mixture: str, layer: int, duration_s: float, proposals_used: int, quorum_met: bool = True
    ) -> None:
        label = str(layer)
        self.layer_duration.labels(mixture, label).observe(duration_s)
        self.proposals_used.labels(mixture, label).observe(proposals_used)
        if not quorum_met:
            self.quorum_misses.labels(mixture, label).inc()

    def observe_request(
        self,
        mixture: str,
        outcome: str,
        duration_s: float,
        ttft_s: float | None = None,
        overhead_s: float | None = None,
    ) -> None:
        self.requests.labels(mixture, outcome).inc()
        self.request_duration.labels(mixture).observe(duration_s)
        if ttft_s is not None:
            self.ttft.labels(mixture).observe(ttft_s)
        if overhead_s is not None:
            self.overhead.labels(mixture).observe(max(0.0, overhead_s))

    def observe_steps(self, mixture: str, steps: int) -> None:
        self.aggregation_steps.labels(mixture).observe(steps)

    def set_endpoint_up(self, endpoint: str, up: bool) -> None:
        self.endpoint_up.labels(endpoint).set(1 if up else 0)

    def set_circuit_open(self, endpoint: str, is_open: bool) -> None:
        self.circuit_open.labels(endpoint).set(1 if is_open else 0)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
