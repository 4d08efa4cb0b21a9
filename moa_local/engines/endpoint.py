"""One engine endpoint: every call to it, and the clients that make them.

An `Endpoint` has an admission limit of `max_concurrency` calls in flight
(the oldest request's calls first, see `admission.py`), a circuit breaker,
bounded retries with jittered backoff (connection errors, 429, 5xx; never
once a stream has delivered a token, never past the call's deadline) and
an overall timeout per call. The breaker is asked before a call queues
and again once it is admitted: calls that waited behind an engine that
has just died are skipped (not sent, and not failures of the engine).
Every call is streamed so that time to first token is known for
proposers too; each fills an `AgentTrace` and records its metrics in
`finally`. A call's `timeout_s` counts from its admission:
time spent waiting for a slot is bounded by the request's deadline
instead, so a busy endpoint's queue does not turn into engine timeouts.

Chat streams go over `upstream.py`, a lean HTTP/1.1 client with kept-alive
connections, and are read as plain SSE JSON: the SDK's request and chunk
objects, and then the general-purpose HTTP stack under them, were most of
the gateway's CPU and capped its throughput (see docs/benchmarks.md). The
`AsyncOpenAI` client still serves the health probes (`/v1/models`).
Transport errors and engine error statuses become the error tree through
`failures.py`, at the one place each call catches them.

Left out on purpose: the pool of endpoints (`pool.py`) and load balancing
across replicas of one model (put a balancer or several vLLM replicas
behind one URL).
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Any

import httpx2
import openai

from moa_local.config import DEFAULT_BATCH_SHARE, EndpointConfig
from moa_local.engines.admission import Admission
from moa_local.engines.breaker import CircuitBreaker, Permit
from moa_local.engines.failures import counts_against, status_error, translate
from moa_local.engines.upstream import CallTimeout, Upstream
from moa_local.errors import BackendError, EndpointStatusError, EndpointTimeout, EndpointUnavailable, StreamBroken
from moa_local.metrics import Metrics
from moa_local.mixture.spec import Priority, Sampling
from moa_local.mixture.trace import AgentTrace

BACKOFF_BASE_S = 0.2
BACKOFF_CAP_S = 4.0
PROBE_TIMEOUT_S = 5.0
PROBE_CONNECTIONS = 2  # the health probes' own small pool, apart from the call slots


class Endpoint:
    def __init__(
        self, name: str, config: EndpointConfig, metrics: Metrics, *, batch_share: float = DEFAULT_BATCH_SHARE
    ) -> None:
        self.name = name
        self.config = config
        self.metrics = metrics
        self.breaker = CircuitBreaker(config.circuit.failures, config.circuit.cooldown_s)
        self.admission = Admission(config.max_concurrency, batch_share)
        metrics.queued.labels(name).set_function(lambda: self.admission.queued)
        metrics.batch_queued.labels(name).set_function(lambda: self.admission.queued_of("batch"))
        api_key = config.resolved_api_key() or "none"
        # Engine calls: the lean streaming client. Probes: the SDK, on a small pool of its own.
        self.upstream = Upstream(
            config.base_url, connect_timeout_s=config.connect_timeout_s,
            headers={"authorization": f"Bearer {api_key}", "user-agent": "moa-local"},
        )  # fmt: skip
        timeout = httpx2.Timeout(PROBE_TIMEOUT_S, connect=config.connect_timeout_s)
        limits = httpx2.Limits(max_connections=PROBE_CONNECTIONS)
        self.http = openai.DefaultAsyncHttpx2Client(limits=limits, timeout=timeout)
        self.client = openai.AsyncOpenAI(
            base_url=config.base_url, api_key=api_key, max_retries=0, timeout=timeout, http_client=self.http
        )

    async def close(self) -> None:
        await self.upstream.aclose()
        await self.client.close()

    async def stream(
        self, messages: list[dict[str, Any]], sampling: Sampling, trace: AgentTrace, order: float = 0.0,
        priority: Priority = "interactive",
    ) -> AsyncGenerator[tuple[int, str], None]:  # fmt: skip
        """Yield (choice index, text) as the engine produces it; fill `trace`.

        `order` places the call in the endpoint's queue when it is full: the
        start of the request it serves (lower is older, admitted first);
        `priority` "batch" waits behind every interactive call.
        """
        start = time.perf_counter()
        trace.finish_reasons = [None] * sampling.n
        self.metrics.inflight.labels(self.name).inc()
        permit: Permit | None = None
        try:
            if not self.breaker.allows():  # skipped at once, not after a wait in the queue
                raise self._skipped(trace)
            async with self.admission.slot(order, priority):
                # Again once admitted: the circuit may have opened while this call waited behind the failing ones.
                permit = self.breaker.allow()
                if permit is None:
                    raise self._skipped(trace)
                # No asyncio.timeout around a yield: it would cancel the consumer.
                # The call's deadline is one timer in the upstream client.
                async with aclosing(self._attempts(messages, sampling, trace, start)) as attempts:
                    async for item in attempts:
                        yield item
            trace.status = "ok"
            self.breaker.record_success(permit)
        except BackendError as exc:
            if trace.status == "pending":
                trace.status = "timeout" if isinstance(exc, EndpointTimeout) else "error"
            trace.error = exc.reason
            if permit is None:
                pass  # skipped, not a call: counting it would push the cool-down out for as long as traffic lasts
            elif counts_against(exc):
                self.breaker.record_failure(permit)
            else:  # the engine answered (a 4xx): no verdict on its health, but a probe's place is free again
                self.breaker.release(permit)
            raise
        except (asyncio.CancelledError, GeneratorExit):
            if trace.status == "pending":
                trace.status = "cancelled"
            if permit is not None:
                self.breaker.release(permit)
            raise
        finally:
            trace.latency_s = time.perf_counter() - start
            self.metrics.inflight.labels(self.name).dec()
            self.metrics.set_circuit_open(self.name, self.breaker.is_open)
            self.metrics.observe_agent(
                self.name, trace.role, trace.status, trace.latency_s, trace.ttft_s,
                trace.prompt_tokens, trace.completion_tokens,
            )  # fmt: skip

    def _skipped(self, trace: AgentTrace) -> EndpointUnavailable:
        trace.status = "skipped"
        return EndpointUnavailable(self.name, f"circuit open after repeated failures; "
                                   f"probing again in {self.breaker.retry_in_s():.0f}s")  # fmt: skip

    async def _attempts(
        self, messages: list[dict[str, Any]], sampling: Sampling, trace: AgentTrace, start: float
    ) -> AsyncGenerator[tuple[int, str], None]:
        # First run once admitted: the call's timeout counts from here, not from the wait in our queue
        # (that wait is bounded by the request's own deadline). `start` is the call's, for its TTFT.
        deadline = time.perf_counter() + self.config.timeout_s
        finish = trace.finish_reasons
        params = sampling.body()
        if not self.config.accepts_seed:
            # vLLM's CPU build (0.32) rewinds a seeded request's generator with `set_offset` when it drops
            # the token sampled after a partial (chunked) prefill; torch's CPU generator has no offset, so
            # the engine core dies and every call in flight fails. The GPU build is not affected.
            params.pop("seed", None)
        body = json.dumps(
            {
                "model": self.config.model,
                "messages": messages,
                "stream": True,
                "stream_options": {"include_usage": True},
                **params,
            },
            ensure_ascii=False,
        ).encode(errors="replace")  # a lone surrogate from an engine's answer, passed on as a reference, becomes '?'
        for attempt in range(self.config.max_retries + 1):
            trace.attempts = attempt + 1
            started = False
            pieces = 0
            try:
                response = await self.upstream.post("/chat/completions", body, _loop_deadline(deadline))
                try:
                    if response.status >= 400:
                        raise status_error(self.name, response.status, await response.read(), response.headers)
                    async for line in response.lines():
                        if not line.startswith("data:") or line == "data: [DONE]":
                            continue
                        chunk = json.loads(line[5:])
                        if chunk.get("error") or chunk.get("object") == "error":
                            error = chunk.get("error") or chunk
                            raise StreamBroken(self.name, f"the engine sent an error: {error.get('message')}")
                        usage = chunk.get("usage")
                        if usage:
                            prompt, completion = usage.get("prompt_tokens") or 0, usage.get("completion_tokens") or 0
                            if type(prompt) is not int or type(completion) is not int:
                                raise StreamBroken(self.name, "the engine sent a malformed usage object")
                            trace.prompt_tokens, trace.completion_tokens = prompt, completion
                        for choice in chunk.get("choices") or ():
                            index = choice.get("index", 0)
                            content = (choice.get("delta") or {}).get("content")
                            if type(index) is not int or not (content is None or type(content) is str):
                                raise StreamBroken(self.name, "the engine sent a malformed chunk")
                            if choice.get("finish_reason") is not None and index < len(finish):
                                finish[index] = choice["finish_reason"]
                            if content:
                                if trace.ttft_s is None:
                                    trace.ttft_s = time.perf_counter() - start
                                started = True
                                pieces += 1
                                yield index, content
                finally:
                    if pieces and not trace.completion_tokens:
                        # Ended before the engine's usage (cut, cancelled, broken off): what it streamed, which
                        # is about one token per piece (vLLM sends a piece per step), so a cut call is counted.
                        trace.completion_tokens = pieces
                    await response.aclose()
                if None in finish:
                    raise StreamBroken(self.name, "the stream ended before the answer was finished")
                return
            except CallTimeout:
                raise EndpointTimeout(self.name, f"no complete answer within {self.config.timeout_s:g}s") from None
            except Exception as exc:  # translated once, here
                error = exc if isinstance(exc, BackendError) else translate(self.name, exc, started)
                left = deadline - time.perf_counter()
                if started or not error.retryable or attempt == self.config.max_retries or left <= 0:
                    raise error from None
                self.metrics.retries.labels(self.name).inc()
                await asyncio.sleep(min(_backoff(attempt, error), left))

    async def served_models(self) -> list[str]:
        """The model names the engine serves (a cheap health probe)."""
        try:
            page = await self.client.models.list(timeout=PROBE_TIMEOUT_S)
        except Exception as exc:  # translated once, here
            raise translate(self.name, exc, False) from None
        return [model.id for model in page.data]


def _loop_deadline(perf_deadline: float) -> float:
    """A perf_counter deadline on the event loop's clock."""
    return asyncio.get_running_loop().time() + (perf_deadline - time.perf_counter())


def _backoff(attempt: int, error: BackendError) -> float:
    if isinstance(error, EndpointStatusError) and error.upstream_status == 429 and error.retry_after_s is not None:
        return min(error.retry_after_s, BACKOFF_CAP_S)
    return random.uniform(0, min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2**attempt))  # full jitter
