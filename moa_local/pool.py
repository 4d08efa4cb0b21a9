"""The endpoint pool: one OpenAI client per engine, and every call made to it.

Each `Endpoint` owns an `AsyncOpenAI` client whose connection pool is sized
to the endpoint's `max_concurrency`, an admission limit enforcing it (the
oldest request's calls first, see `admission.py`), a
circuit breaker, bounded retries with jittered backoff (connection errors,
429, 5xx; never once a stream has delivered a token) and an overall timeout
per call. SDK and transport errors are translated here, once, into the
error tree of `errors.py`. Every call is streamed so that time to first
token is known for proposers too; each fills an `AgentTrace` and records
its metrics in `finally`.

Chat streams are read as plain SSE JSON over the client's own HTTP
connection pool rather than through the SDK's request and chunk objects,
which cost five times the CPU of the HTTP exchange itself and capped the
gateway's throughput (see docs/benchmarks.md). An engine's error status
still becomes the SDK's own exception, so translation and backoff see the
same errors either way.

Left out on purpose: load balancing across replicas of one model (put a
balancer or several vLLM replicas behind one URL).
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import AsyncGenerator, Mapping
from contextlib import aclosing
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import httpx2
import openai

from moa_local.admission import Admission
from moa_local.breaker import CircuitBreaker
from moa_local.config import EndpointConfig
from moa_local.errors import (
    BackendError,
    EndpointStatusError,
    EndpointTimeout,
    EndpointUnavailable,
    StreamBroken,
)
from moa_local.metrics import Metrics
from moa_local.trace import AgentTrace

BACKOFF_BASE_S = 0.2
BACKOFF_CAP_S = 4.0
PROBE_TIMEOUT_S = 5.0


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
        return {key: value for key, value in fields.items() if value is not None}


@dataclass
class Answer:
    texts: list[str]
    finish_reasons: list[str | None]


class Endpoint:
    def __init__(self, name: str, config: EndpointConfig, metrics: Metrics) -> None:
        self.name = name
        self.config = config
        self.metrics = metrics
        self.breaker = CircuitBreaker(config.circuit.failures, config.circuit.cooldown_s)
        self.admission = Admission(config.max_concurrency)
        metrics.queued.labels(name).set_function(lambda: self.admission.queued)
        timeout = httpx2.Timeout(config.timeout_s, connect=config.connect_timeout_s)
        limits = httpx2.Limits(
            max_connections=config.max_concurrency, max_keepalive_connections=config.max_concurrency
        )
        self.http = openai.DefaultAsyncHttpx2Client(limits=limits, timeout=timeout)
        self.client = openai.AsyncOpenAI(
            base_url=config.base_url,
            api_key=config.resolved_api_key() or "none",
            max_retries=0,  # retries are ours: bounded, jittered, never mid-stream
            timeout=timeout,
            http_client=self.http,
        )
        self._chat_url = f"{config.base_url}/chat/completions"
        self._headers = {"authorization": f"Bearer {config.resolved_api_key() or 'none'}"}

    async def close(self) -> None:
        await self.client.close()

    async def complete(
        self, messages: list[dict[str, Any]], sampling: Sampling, trace: AgentTrace, order: float = 0.0
    ) -> Answer:
        parts: list[list[str]] = [[] for _ in range(sampling.n)]
        async for index, delta in self.stream(messages, sampling, trace, order):
            if index < len(parts):
                parts[index].append(delta)
        return Answer(["".join(p) for p in parts], list(trace.finish_reasons))

    async def stream(
        self, messages: list[dict[str, Any]], sampling: Sampling, trace: AgentTrace, order: float = 0.0
    ) -> AsyncGenerator[tuple[int, str], None]:
        """Yield (choice index, text) as the engine produces it; fill `trace`.

        `order` places the call in the endpoint's queue when it is full: the
        start of the request it serves (lower is older, admitted first).
        """
        start = time.perf_counter()
        trace.finish_reasons = [None] * sampling.n
        self.metrics.inflight.labels(self.name).inc()
        try:
            if not self.breaker.allow():
                trace.status = "skipped"
                raise EndpointUnavailable(self.name, f"circuit open after repeated failures; "
                                          f"probing again in {self.breaker.retry_in_s():.0f}s")  # fmt: skip
            # No asyncio.timeout around a yield: it would cancel the consumer.
            # The call's deadline is checked per chunk and bounds each wait.
            attempts = self._attempts(messages, sampling, trace, start)
            async with self.admission.slot(order), aclosing(attempts):
                async for item in attempts:
                    yield item
            trace.status = "ok"
            self.breaker.record_success()
        except BackendError as exc:
            if trace.status == "pending":
                trace.status = "timeout" if isinstance(exc, EndpointTimeout) else "error"
            trace.error = exc.reason
            if trace.status == "skipped":
                pass  # not a call: counting it would push the cool-down out for as long as traffic lasts
            elif _counts_against(exc):
                self.breaker.record_failure()
            else:  # the engine answered (a 4xx): no verdict on its health, but a probe's slot is free again
                self.breaker.release_probe()
            raise
        except (asyncio.CancelledError, GeneratorExit):
            if trace.status == "pending":
                trace.status = "cancelled"
            self.breaker.release_probe()
            raise
        finally:
            trace.latency_s = time.perf_counter() - start
            self.metrics.inflight.labels(self.name).dec()
            self.metrics.set_circuit_open(self.name, self.breaker.is_open)
            self.metrics.observe_agent(
                self.name, trace.role, trace.status, trace.latency_s, trace.ttft_s,
                trace.prompt_tokens, trace.completion_tokens,
            )  # fmt: skip

    async def _attempts(
        self, messages: list[dict[str, Any]], sampling: Sampling, trace: AgentTrace, start: float
    ) -> AsyncGenerator[tuple[int, str], None]:
        deadline = start + self.config.timeout_s
        finish = trace.finish_reasons
        for attempt in range(self.config.max_retries + 1):
            trace.attempts = attempt + 1
            started = False
            try:
                async with asyncio.timeout_at(_loop_deadline(deadline)):
                    body = {
                        "model": self.config.model,
                        "messages": messages,
                        "stream": True,
                        "stream_options": {"include_usage": True},
                        **sampling.body(),
                    }
                    timeout = httpx2.Timeout(
                        max(0.001, deadline - time.perf_counter()), connect=self.config.connect_timeout_s
                    )
                    request = self.http.build_request(
                        "POST", self._chat_url, json=body, headers=self._headers, timeout=timeout
                    )
                    response = await self.http.send(request, stream=True)
                try:
                    if response.status_code >= 400:
                        await response.aread()
                        raise _status_error(response)
                    async for line in response.aiter_lines():
                        if not line.startswith("data:") or line == "data: [DONE]":
                            continue
                        if time.perf_counter() > deadline:
                            raise TimeoutError
                        chunk = json.loads(line[5:])
                        if chunk.get("error") or chunk.get("object") == "error":
                            error = chunk.get("error") or chunk
                            raise StreamBroken(self.name, f"the engine sent an error: {error.get('message')}")
                        usage = chunk.get("usage")
                        if usage:
                            trace.prompt_tokens = usage.get("prompt_tokens") or 0
                            trace.completion_tokens = usage.get("completion_tokens") or 0
                        for choice in chunk.get("choices") or ():
                            index = choice.get("index", 0)
                            if choice.get("finish_reason") is not None and index < len(finish):
                                finish[index] = choice["finish_reason"]
                            text = (choice.get("delta") or {}).get("content")
                            if text:
                                if trace.ttft_s is None:
                                    trace.ttft_s = time.perf_counter() - start
                                started = True
                                yield index, text
                finally:
                    await response.aclose()
                if None in finish:
                    raise StreamBroken(self.name, "the stream ended before the answer was finished")
                return
            except TimeoutError:
                raise EndpointTimeout(self.name, f"no complete answer within {self.config.timeout_s:g}s") from None
            except Exception as exc:  # translated once, here
                error = exc if isinstance(exc, BackendError) else translate(self.name, exc, started)
                if started or not error.retryable or attempt == self.config.max_retries:
                    raise error from None
                self.metrics.retries.labels(self.name).inc()
                await asyncio.sleep(_backoff(attempt, exc))

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


def translate(endpoint: str, exc: BaseException, started: bool) -> BackendError:
    """Map an SDK or transport error to our error tree."""
    if isinstance(exc, openai.APITimeoutError | httpx2.TimeoutException):
        return EndpointTimeout(endpoint, "timed out waiting for the engine")
    if isinstance(exc, openai.APIStatusError):
        return EndpointStatusError(
            endpoint, f"engine answered {exc.status_code}: {_status_message(exc)}", upstream_status=exc.status_code
        )
    if started or isinstance(exc, httpx2.RemoteProtocolError | httpx2.ReadError):
        return StreamBroken(endpoint, f"the stream broke off ({type(exc).__name__})")
    if isinstance(exc, openai.APIConnectionError | httpx2.TransportError):
        cause = exc.__cause__ or exc
        return EndpointUnavailable(endpoint, f"cannot connect to the engine ({type(cause).__name__})")
    if isinstance(exc, openai.APIError):
        return StreamBroken(endpoint, f"the engine sent an error: {exc.message}")
    return BackendError(endpoint, f"unexpected {type(exc).__name__}: {exc}")


def _status_error(response: httpx2.Response) -> openai.APIStatusError:
    """The SDK's own exception for an engine's 4xx/5xx, as its client would raise it."""
    try:
        body: Any = response.json()
    except ValueError:
        body = response.text or None
    data = body.get("error", body) if isinstance(body, dict) else body
    kind = openai.RateLimitError if response.status_code == 429 else openai.APIStatusError
    return kind(f"Error code: {response.status_code}", response=response, body=data)


def _status_message(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])[:300]
        if body.get("message"):
            return str(body["message"])[:300]
    return exc.message[:300]


def _counts_against(exc: BackendError) -> bool:
    """Client-side mistakes (4xx other than 429) say nothing about the engine's health."""
    if isinstance(exc, EndpointStatusError):
        return exc.upstream_status == 429 or exc.upstream_status >= 500
    return True


def _backoff(attempt: int, exc: BaseException) -> float:
    if isinstance(exc, openai.RateLimitError):
        retry_after = exc.response.headers.get("retry-after", "")
        if retry_after.replace(".", "", 1).isdigit():
            return min(float(retry_after), BACKOFF_CAP_S)
    return random.uniform(0, min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2**attempt))  # full jitter


class EndpointPool:
    """Opens one `Endpoint` per configured engine; closes them all on exit."""

    def __init__(self, endpoints: Mapping[str, EndpointConfig], metrics: Metrics) -> None:
        self._configs = dict(endpoints)
        self._metrics = metrics
        self._endpoints: dict[str, Endpoint] = {}

    async def __aenter__(self) -> EndpointPool:
        self._endpoints = {name: Endpoint(name, cfg, self._metrics) for name, cfg in self._configs.items()}
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await asyncio.gather(*(endpoint.close() for endpoint in self._endpoints.values()))
        self._endpoints = {}

    def __getitem__(self, name: str) -> Endpoint:
        return self._endpoints[name]

    def stream(
        self, endpoint: str, messages: list[dict[str, Any]], sampling: Sampling, trace: AgentTrace, order: float = 0.0
    ) -> AsyncGenerator[tuple[int, str], None]:
        return self._endpoints[endpoint].stream(messages, sampling, trace, order)

    def context_window(self, endpoint: str) -> int | None:
        return self._configs[endpoint].context_window

    def __iter__(self) -> Any:
        return iter(self._endpoints.values())
