"""Snapshots of the gateway's /metrics and the per-endpoint rates between two of them.

Two scrapes `interval` apart give, per endpoint: calls/s, median latency
(interpolated in the histogram buckets, as PromQL's `histogram_quantile`
does), prompt and generated tokens/s, errors, calls in flight and health.
It keeps no history and computes nothing Prometheus could not: it is the
library under `moa-local top`, which draws the table and runs the live loop
(cli/top.py); nothing here prints.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from dataclasses import dataclass, field

import httpx
from prometheus_client.parser import text_string_to_metric_families

from moa_local.errors import MoaError
from moa_local.urls import metrics_url

ERROR_OUTCOMES = ("error", "timeout")

Buckets = dict[float, float]  # upper bound -> cumulative count


@dataclass
class Snapshot:
    """The gateway's per-endpoint counters at one instant (summed over roles)."""

    at: float
    calls: dict[str, dict[str, float]] = field(default_factory=lambda: defaultdict(dict))
    buckets: dict[str, Buckets] = field(default_factory=lambda: defaultdict(dict))
    tokens: dict[str, dict[str, float]] = field(default_factory=lambda: defaultdict(dict))
    inflight: dict[str, float] = field(default_factory=dict)
    up: dict[str, float] = field(default_factory=dict)

    @property
    def endpoints(self) -> list[str]:
        names = set(self.calls) | set(self.buckets) | set(self.tokens) | set(self.inflight) | set(self.up)
        return sorted(names)


@dataclass(frozen=True)
class EndpointRow:
    endpoint: str
    up: bool | None
    inflight: int
    calls_per_s: float | None
    p50_s: float | None
    p50_windowed: bool  # False: no call in the window, so the median since start
    prompt_tokens_per_s: float | None
    completion_tokens_per_s: float | None
    errors: int


def parse_snapshot(text: str, at: float) -> Snapshot:
    snap = Snapshot(at=at)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            endpoint = sample.labels.get("endpoint")
            if endpoint is None:
                continue
            if sample.name == "moa_agent_calls_total":
                outcome = sample.labels.get("outcome", "")
                snap.calls[endpoint][outcome] = snap.calls[endpoint].get(outcome, 0.0) + sample.value
            elif sample.name == "moa_agent_duration_seconds_bucket":
                le = float(sample.labels["le"])
                snap.buckets[endpoint][le] = snap.buckets[endpoint].get(le, 0.0) + sample.value
            elif sample.name == "moa_tokens_total":
                kind = sample.labels.get("kind", "")
                snap.tokens[endpoint][kind] = snap.tokens[endpoint].get(kind, 0.0) + sample.value
            elif sample.name == "moa_inflight":
                snap.inflight[endpoint] = sample.value
            elif sample.name == "moa_endpoint_up":
                snap.up[endpoint] = sample.value
    return snap


def fetch_snapshot(client: httpx.Client, url: str, api_key: str | None = None) -> Snapshot:
    """Read the /metrics of the server at `url`; a MoaError when it cannot be read."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    target = metrics_url(url)
    try:
        response = client.get(target, headers=headers)
    except (httpx.HTTPError, httpx.InvalidURL) as exc:  # InvalidURL (a bad port, say) is no HTTPError
        raise MoaError(f"cannot read {target}: {exc!s} ({type(exc).__name__})") from None
    if response.status_code != 200:
        hint = " (pass --api-key)" if response.status_code == 401 else ""
        raise MoaError(f"cannot read {target}: HTTP {response.status_code}{hint}")
    return parse_snapshot(response.text, time.monotonic())


def quantile(q: float, buckets: Buckets) -> float | None:
    """The q-quantile of cumulative buckets, interpolated linearly like PromQL."""
    edges = sorted(buckets.items())
    if not edges or edges[-1][1] <= 0:
        return None
    total = edges[-1][1]
    rank = q * total
    lower, below = 0.0, 0.0
    for upper, count in edges:
        if count >= rank:
            if math.isinf(upper):
                return lower  # past the last finite edge: its bound is all we know
            if count == below:
                return upper
            return lower + (upper - lower) * (rank - below) / (count - below)
        lower, below = upper, count
    return lower


def summarize(before: Snapshot | None, after: Snapshot) -> list[EndpointRow]:
    seconds = after.at - before.at if before is not None else 0.0
    rows = []
    for endpoint in after.endpoints:
        calls = sum(after.calls.get(endpoint, {}).values())
        buckets = after.buckets.get(endpoint, {})
        tokens = after.tokens.get(endpoint, {})
        calls_rate = prompt_rate = completion_rate = None
        window: Buckets = {}
        earlier_calls = sum(before.calls.get(endpoint, {}).values()) if before is not None else 0.0
        if before is not None and seconds > 0 and calls >= earlier_calls:  # else the gateway restarted
            calls_rate = (calls - earlier_calls) / seconds
            prompt_rate = _rate(tokens, before.tokens.get(endpoint, {}), "prompt", seconds)
            completion_rate = _rate(tokens, before.tokens.get(endpoint, {}), "completion", seconds)
            earlier = before.buckets.get(endpoint, {})
            window = {le: count - earlier.get(le, 0.0) for le, count in buckets.items()}
        windowed = quantile(0.5, window) if window else None
        up = after.up.get(endpoint)
        rows.append(
            EndpointRow(
                endpoint=endpoint,
                up=None if up is None else up >= 1,
                inflight=int(after.inflight.get(endpoint, 0.0)),
                calls_per_s=calls_rate,
                p50_s=windowed if windowed is not None else quantile(0.5, buckets),
                p50_windowed=windowed is not None,
                prompt_tokens_per_s=prompt_rate,
                completion_tokens_per_s=completion_rate,
                errors=int(sum(after.calls.get(endpoint, {}).get(o, 0.0) for o in ERROR_OUTCOMES)),
            )
        )
    return rows


def _rate(now: dict[str, float], earlier: dict[str, float], kind: str, seconds: float) -> float:
    return max(0.0, now.get(kind, 0.0) - earlier.get(kind, 0.0)) / seconds
