"""A staircase mixture in a batch starts its aggregator after the layers; the evaluation keeps it as configured.

Fake engines on purpose: what is asserted is which calls the aggregator's
engine receives (one whole call, or continuation steps), not what a model says.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry

from moa_local.api.completion import complete
from moa_local.engines.pool import EndpointPool
from moa_local.metrics import Metrics
from moa_local.mixture.pipeline import Pipeline
from tests.support.gateway_fixtures import fake_config, mixture

BODY = {"model": "moa", "messages": [{"role": "user", "content": "say something"}], "moa": {"trace": True}}


async def answer(fake_engine: Any, **options: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The batch answer to BODY from a staircase mixture, and the bodies its aggregator's engine received.

    The proposer streams for 2 s; the aggregator answers at once, so its 12 tokens in steps of 4 end before.
    """
    servers = {"a": fake_engine(model="a", tokens=100, token_delay_ms=20.0), "agg": fake_engine(model="agg", tokens=10)}
    aggregator = {"endpoint": "agg", "start": "staircase", "chunk_tokens": 2, "step_tokens": 4, "max_tokens": 12}
    config = fake_config(servers, {"moa": mixture([{"endpoint": "a", "max_tokens": 100}], aggregator)},
                         continues_final_message=True)  # fmt: skip
    metrics = Metrics(CollectorRegistry())
    async with EndpointPool(config.endpoints, metrics) as pool:
        status, body = await complete(config, Pipeline(pool, metrics), BODY, "req-1", priority="batch", **options)
    assert status == 200, body
    return body, servers["agg"].chat_bodies()


async def test_fault_a_batch_line_runs_a_staircase_aggregator_once_after_the_layers(fake_engine: Any) -> None:
    body, calls = await answer(fake_engine)
    assert body["moa"]["start"] == "after_layers" and not body["moa"].get("steps")
    (call,) = calls
    assert "continue_final_message" not in call and call["max_tokens"] == 12


async def test_fault_keep_staircase_runs_the_steps_as_configured(fake_engine: Any) -> None:
    body, calls = await answer(fake_engine, keep_staircase=True)
    assert body["moa"]["start"] == "staircase" and len(body["moa"]["steps"]) == len(calls) == 3
    assert [call.get("continue_final_message", False) for call in calls] == [False, True, True]
