"""Engine-side figures for a benchmark segment, from each vLLM server's `/metrics`.

`EngineWatch` scrapes every engine before a segment, samples the gauges
(KV-cache use, running and waiting requests) every `interval_s` while it
runs, scrapes again after, and reports per engine: generated and prompt
tokens (counter deltas), generation tokens/s over the segment's wall time,
the prefix-cache hit rate, the peaks of the gauges, and how occupied the
engine was: the share of samples with at least one request running (its
utilisation during the segment) and the mean number running. Only the
samples taken while the segment runs count there, not the scrapes before
and after it. A scrape that fails is counted and noted, never raised: the
load figures stay valid without it.

Left out on purpose: histograms (the client measures latency itself) and
any metric naming scheme but vLLM's `vllm:*` (with its older aliases).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from moa_local.urls import metrics_url as metrics_url  # an engine's URL works as the gateway's does

# What we read -> the sample names that carry it, newest vLLM name first.
COUNTERS = {
    "generation_tokens": ("vllm:generation_tokens_total",),
    "prompt_tokens": ("vllm:prompt_tokens_total",),
    "prefix_hits": ("vllm:prefix_cache_hits_total", "vllm:gpu_prefix_cache_hits_total"),
    "prefix_queries": ("vllm:prefix_cache_queries_total", "vllm:gpu_prefix_cache_queries_total"),
}
GAUGES = {
    "kv_cache_usage": ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc", "vllm:cpu_cache_usage_perc"),
    "running": ("vllm:num_requests_running",),
    "waiting": ("vllm:num_requests_waiting",),
}
SCRAPE_TIMEOUT_S = 5.0


def parse(text: str) -> dict[str, float]:
    """Each known figure, summed over label sets (several models or reasons)."""
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name] = samples.get(sample.name, 0.0) + float(sample.value)
    figures: dict[str, float] = {}
    for key, names in (COUNTERS | GAUGES).items():
        for name in names:
            if name in samples:
                figures[key] = samples[name]
                break
    return figures


async def scrape(client: httpx.AsyncClient, url: str) -> dict[str, float] | str:
    """The figures, or a one-line reason why there are none."""
    try:
        response = await client.get(url, timeout=SCRAPE_TIMEOUT_S)
        if response.status_code != 200:
            return f"{url}: HTTP {response.status_code}"
        return parse(response.text)
    except httpx.HTTPError as exc:
        return f"{url}: {type(exc).__name__}"
    except ValueError as exc:  # not Prometheus text
        return f"{url}: unreadable metrics ({exc})"


def occupancy(running: Sequence[float]) -> dict[str, float | None]:
    """From the running-requests gauge's samples: the share with at least one running, and their mean."""
    if not running:
        return {"busy_share": None, "mean_running": None}
    return {"busy_share": sum(1 for n in running if n > 0) / len(running), "mean_running": sum(running) / len(running)}


@dataclass
class _Engine:
    url: str
    before: dict[str, float] = field(default_factory=dict)
    after: dict[str, float] = field(default_factory=dict)
    peaks: dict[str, float] = field(default_factory=dict)
    running: list[float] = field(default_factory=list)  # the gauge at each sample during the segment
    failures: list[str] = field(default_factory=list)

    def take(self, result: dict[str, float] | str) -> dict[str, float]:
        if isinstance(result, str):
            self.failures.append(result)
            return {}
        for key in GAUGES:
            if key in result:
                self.peaks[key] = max(self.peaks.get(key, 0.0), result[key])
        return result

    def sample(self, result: dict[str, float] | str) -> None:
        if "running" in (figures := self.take(result)):
            self.running.append(figures["running"])

    def figures(self, wall_s: float) -> dict[str, Any]:
        def delta(key: str) -> float | None:
            if key in self.before and key in self.after:
                return self.after[key] - self.before[key]
            return None

        generated, queries, hits = delta("generation_tokens"), delta("prefix_queries"), delta("prefix_hits")
        return {
            "url": self.url,
            "generated_tokens": generated,
            "prompt_tokens": delta("prompt_tokens"),
            "generation_tokens_per_s": generated / wall_s if generated is not None and wall_s > 0 else None,
            "prefix_cache_hit_rate": hits / queries if hits is not None and queries else None,
            "peak_kv_cache_usage": self.peaks.get("kv_cache_usage"),
            "peak_running": self.peaks.get("running"),
            "peak_waiting": self.peaks.get("waiting"),
            **occupancy(self.running),
            "gauge_samples": len(self.running),
            "scrape_failures": len(self.failures),
            "note": self.failures[0] if self.failures else None,
        }


class EngineWatch:
    """`async with EngineWatch(urls) as watch: ...` then `watch.figures()`.

    It has its own small HTTP client: the load's connections may all be busy.
    """

    def __init__(self, urls: tuple[str, ...], interval_s: float = 1.0) -> None:
        self.client = httpx.AsyncClient(timeout=SCRAPE_TIMEOUT_S, limits=httpx.Limits(max_connections=8))
        self.engines = [_Engine(metrics_url(url)) for url in urls]
        self.interval_s = interval_s
        self._sampler: asyncio.Task[None] | None = None
        self._start = self._end = 0.0

    async def __aenter__(self) -> EngineWatch:
        if self.engines:
            for engine, result in zip(self.engines, await self._scrape_all(), strict=True):
                engine.before = engine.take(result)
            self._sampler = asyncio.create_task(self._sample())
        self._start = time.perf_counter()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._end = time.perf_counter()
        if self._sampler is not None:
            self._sampler.cancel()
            with suppress(asyncio.CancelledError):
                await self._sampler
        try:
            if self.engines and exc_type is None:
                for engine, result in zip(self.engines, await self._scrape_all(), strict=True):
                    engine.after = engine.take(result)
        finally:
            await self.client.aclose()

    def figures(self, wall_s: float | None = None) -> list[dict[str, Any]]:
        wall = self._end - self._start if wall_s is None else wall_s
        return [engine.figures(wall) for engine in self.engines]

    async def _scrape_all(self) -> list[dict[str, float] | str]:
        return list(await asyncio.gather(*(scrape(self.client, engine.url) for engine in self.engines)))

    async def _sample(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            for engine, result in zip(self.engines, await self._scrape_all(), strict=True):
                engine.sample(result)
