"""Fuzz: hostile bodies, headers, routes and methods against the real gateway over loopback (fake engines).

Each family of `tests/support/hostile_requests.py` runs through hypothesis
(derandomized: the same cases every run, no shrinking) against one
gateway with API keys on: every answer must be below 500, every 4xx in the
OpenAI envelope naming the field at fault, the gateway's log free of
tracebacks, and the gateway healthy and idle afterwards. About 1,500
requests here; `bench/reliability/fuzz.py` runs 10,000 and writes the
figures to docs/reliability/.
"""

from __future__ import annotations

import gc
import json
from collections.abc import Iterator

import pytest

from tests.support.fuzz_target import FuzzTarget, LogWatch, Outcome, explore
from tests.support.hostile_requests import FAMILIES
from tests.support.request_cases import chat, type_grid, with_value

EXAMPLES = {"valid": 300, "wrong_types": 200, "numbers": 150, "nesting": 100, "surrogates": 150, "bytes": 200,
            "sizes": 7, "routes": 300, "headers": 250}  # fmt: skip
KNOWN: dict[str, pytest.MarkDecorator] = {}  # families with a known defect: none now


@pytest.fixture(scope="module")
def target() -> Iterator[FuzzTarget]:
    target = FuzzTarget()
    yield target
    target.stop()


@pytest.fixture
def watch() -> Iterator[LogWatch]:
    # pytest keeps a failed test's log records (their tracebacks hold the failed request's tasks) until
    # its teardown: the "never retrieved" lines those tasks log when collected belong to that test.
    gc.collect()
    with LogWatch() as watch:
        yield watch


def report(outcomes: list[Outcome]) -> str:
    bad = [o for o in outcomes if o.problems]
    return f"{len(bad)} of {len(outcomes)} answers wrong:\n" + "\n".join(
        f"{o.case.describe()}\n    -> {o.problems[0][:300]}" for o in bad[:10]
    )


# The families with known defects run last: the "Task exception was never retrieved" lines of a failed
# request are logged when its tasks are collected, which may fall in a later test.
ORDER = sorted(FAMILIES, key=lambda family: family in KNOWN)


@pytest.mark.parametrize("family", [pytest.param(f, marks=KNOWN.get(f, ())) for f in ORDER])
def test_fuzz_no_5xx_every_4xx_an_envelope_naming_the_field(target: FuzzTarget, watch: LogWatch, family: str) -> None:
    outcomes = explore(target, family, EXAMPLES[family])
    if family == "wrong_types":
        outcomes += [target.try_case(case) for case in type_grid()]
    assert len(outcomes) >= min(EXAMPLES[family], 7), "the family ran fewer cases than asked"
    statuses = {o.status for o in outcomes}
    assert any(s is not None and 400 <= s < 500 for s in statuses), f"no 4xx at all: {statuses}"
    assert not any(o.problems for o in outcomes), report(outcomes)
    assert watch.take() == [], "tracebacks or errors in the gateway's log"
    assert target.health_problems() == []


def test_fuzz_an_integer_of_5000_digits_is_a_400(target: FuzzTarget, watch: LogWatch) -> None:
    body = json.dumps(with_value("max_tokens", 0)).replace('"max_tokens": 0', '"max_tokens": ' + "9" * 5000)
    outcome = target.try_case(chat(body.encode(), "numbers", "max_tokens"))
    assert outcome.status == 400 and outcome.problems == [], outcome.problems
    assert watch.take() == []


def test_fuzz_error_answers_carry_the_request_id(target: FuzzTarget) -> None:
    cases = [
        chat({"model": "mix", "messages": []}, "valid"),  # 400
        chat({"model": "nope", "messages": [{"role": "user", "content": "hi"}]}, "valid"),  # 404
        chat(b"{", "bytes"),  # 400, not JSON
        chat({"model": "mix", "messages": [{"role": "user", "content": "x" * (9 << 20)}]}, "sizes"),  # 413
    ]
    for case in cases:
        response = target.send(type(case)(**{**case.__dict__, "headers": {**case.headers, "x-request-id": "fz-1"}}))
        assert response.status_code >= 400
        assert response.headers.get("x-request-id") == "fz-1", response.status_code
