"""`seed` reaches every engine except vLLM's CPU build, whose engine core dies on a seeded request.

The CPU build's worker rewinds a seeded request's generator with `set_offset` when it drops the
token sampled after a partial (chunked) prefill, and torch's CPU generator has no offset. These
tests read what the fake engine received; the real CPU engine surviving a seeded burst is in
tests/e2e/test_seeded_requests_engine.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from moa_local.mixture.spec import Sampling
from tests.support.calls import call, opened

if TYPE_CHECKING:
    from tests.support.fake_fixtures import FakeEngineFactory

CPU_SERVE = {"engine": "vllm-cpu", "model_path": "/models/m"}
GPU_SERVE = {"engine": "vllm", "model_path": "/models/m", "gpus": [0]}


@pytest.mark.parametrize(("serve", "sent"), [(None, True), (GPU_SERVE, True), (CPU_SERVE, False)],
                         ids=["external", "vllm", "vllm-cpu"])  # fmt: skip
async def test_seed_is_sent_unless_the_engine_is_the_cpu_build(
    fake_engine: FakeEngineFactory, serve: dict[str, object] | None, sent: bool
) -> None:
    server = fake_engine(model="m")
    async with opened(server.base_url, serve=serve) as endpoint:
        answer, trace = await call(endpoint, Sampling(temperature=0.7, seed=7, max_tokens=8))
    assert trace.status == "ok", answer
    (body,) = server.chat_bodies()
    assert body.get("seed") == (7 if sent else None)
    assert (body["temperature"], body["max_tokens"]) == (0.7, 8)  # the rest of the sampling goes through
