"""A user's own harness pointed at the gateway: lm-evaluation-harness runs a task against a mixture.

The mixture runs over fake engines whose aggregator gives a fixed reply,
so exact match is known: 2 of 3 (the harness and its task are in
`tests/support/harness.py`; `tests/e2e/test_harness_engine.py` runs the
same against the real CPU engines).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.support.gateway_fixtures import fake_config, mixture
from tests.support.harness import run_harness

if TYPE_CHECKING:
    from tests.support.fake_fixtures import FakeEngineFactory
    from tests.support.gateway_fixtures import GatewayFactory


def test_fault_lm_eval_harness_runs_a_local_task_against_a_mixture_through_the_gateway(
    tmp_path: Path, fake_engine: FakeEngineFactory, gateway_server: GatewayFactory
) -> None:
    a, agg = fake_engine(model="a"), fake_engine(model="agg", reply="Paris")
    gateway = gateway_server(fake_config({"a": a, "agg": agg}, {"moa": mixture(["a"], "agg")}))
    rows = [{"question": "Capital of France?", "answer": "Paris"}, {"question": "Same again?", "answer": "Paris"},
            {"question": "Capital of Italy?", "answer": "Rome"}]  # fmt: skip
    results, samples = run_harness(tmp_path, gateway.base_url, "moa", rows)
    assert results["exact_match,none"] == pytest.approx(2 / 3)
    assert [s["filtered_resps"] for s in samples] == [["Paris"]] * 3
    assert len(agg.chat_bodies()) == 3 and len(a.chat_bodies()) == 3  # every question went through the mixture
