"""The fuzz target: a real gateway over loopback, the checks its answers must pass, and its log watched.

`FuzzTarget` runs three fake engines (instant answers) and the gateway on
threads, with API keys on (`hostile_requests.API_KEY`), a body limit of
8 MiB (so 5 MB bodies are parsed, and 10 MB ones refused) and a context
window on the aggregator (so big prompts are refused by it). `try_case`
sends one `Case` and returns the `Outcome`: the status and the problems
found, where a problem is any of

- a status >= 500, or no answer at all;
- a 4xx that is not the OpenAI envelope (JSON, exactly message, type,
  param, code; a message), or whose `param` does not name the field at
  fault (its first dotted part) when the case has one;
- a 200 chat answer that is not one: a completion without `choices`, or a
  stream with an error event or without `[DONE]`.

`LogWatch` collects every log record with a traceback or at ERROR and
above, from the root logger and uvicorn's (which does not propagate):
the gateway's output must have none. `explore` runs a family through
hypothesis (derandomized, no shrinking, no example database) and collects
every outcome instead of stopping at the first problem, for the long run.

Left out on purpose: what the cases are (`hostile_requests.py`).
"""

from __future__ import annotations

import gc
import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
from hypothesis import HealthCheck, Phase, given, settings

from tests.support.fake_fixtures import FakeServer
from tests.support.gateway_fixtures import GatewayServer, fake, fake_config
from tests.support.hostile_requests import FAMILIES, PARSER_REFUSES
from tests.support.request_cases import API_KEY, Case

KEYS_ENV = "MOA_FUZZ_KEYS"
MAX_BODY = 8 * 1024 * 1024
ENVELOPE = {"message", "type", "param", "code"}
REPLY = "{model} says: {words}"


class LogWatch(logging.Handler):
    """Keeps the records that carry a traceback or are errors."""

    LOGGERS = ("", "uvicorn", "uvicorn.error", "uvicorn.access")

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self._lock_records = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info or record.levelno >= logging.ERROR or "Traceback" in record.getMessage():
            with self._lock_records:
                self.records.append(record)

    def __enter__(self) -> LogWatch:
        for name in self.LOGGERS:
            logging.getLogger(name).addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        for name in self.LOGGERS:
            logging.getLogger(name).removeHandler(self)

    def take(self) -> list[str]:
        """The records seen since the last call, formatted (with their tracebacks).

        "Task exception was never retrieved" is logged only when the task is collected, and a kept
        record's traceback may be what keeps such a task alive: so drop the records, collect, repeat.
        """
        formatter = logging.Formatter("%(levelname)s %(name)s: %(message)s")
        taken: list[str] = []
        for _ in range(3):
            with self._lock_records:
                records, self.records = self.records, []
            taken += [formatter.format(record) for record in records]
            records.clear()
            gc.collect()
        return taken


@dataclass
class Outcome:
    case: Case
    status: int | None
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0


class FuzzTarget:
    def __init__(self) -> None:
        # Replies that do not echo the prompt: a 5 MB prompt must not become a 5 MB answer.
        self.p1, self.p2, self.agg = (fake(f"{name}-model", template=REPLY) for name in ("p1", "p2", "agg"))
        self.fakes: tuple[FakeServer, ...] = (self.p1, self.p2, self.agg)
        mixtures = {
            "mix": {"layers": [{"agents": [{"endpoint": "p1"}, {"endpoint": "p2"}], "min_ok": 1}],
                    "aggregator": {"endpoint": "agg"}},
            "deep": {"layers": [{"agents": [{"endpoint": "p1"}, {"endpoint": "p2"}]}, {"agents": [{"endpoint": "p2"}]}],
                     "aggregator": {"endpoint": "agg"}},
        }  # fmt: skip
        config = fake_config(
            {"p1": self.p1, "p2": self.p2, "agg": self.agg}, mixtures,
            {"api_keys_env": KEYS_ENV, "max_body_bytes": MAX_BODY},
        )  # fmt: skip
        config = config.model_copy(
            update={
                "endpoints": {
                    **config.endpoints,
                    "agg": config.endpoints["agg"].model_copy(update={"context_window": 65536}),
                }
            }
        )
        previous = os.environ.get(KEYS_ENV)
        os.environ[KEYS_ENV] = API_KEY  # read once, when the app is built
        try:
            self.gw = GatewayServer(config)
        finally:
            if previous is None:
                del os.environ[KEYS_ENV]
            else:
                os.environ[KEYS_ENV] = previous
        self.http = httpx.Client(base_url=self.gw.url, timeout=60)

    def send(self, case: Case) -> httpx.Response:
        content: bytes | Iterator[bytes] = case.body
        if case.chunked:
            content = iter([case.body[i : i + 65536] for i in range(0, len(case.body), 65536)])
        headers = [(name.encode(), value.encode("latin-1")) for name, value in case.headers.items()]
        return self.http.request(case.method, case.path, content=content, headers=headers)

    def try_case(self, case: Case) -> Outcome:
        started = time.perf_counter()
        for attempt in (1, 2):
            try:
                response = self.send(case)
                break
            except httpx.HTTPError as exc:
                # Once more on a fresh connection: a kept-alive one the gateway closed after an earlier
                # case's failure must not be blamed on this case. A second failure is this case's own.
                if attempt == 2:
                    problem = f"no answer: {type(exc).__name__}: {exc}"
                    return Outcome(case, None, [problem], time.perf_counter() - started)
        return Outcome(case, response.status_code, judge(case, response), time.perf_counter() - started)

    def health_problems(self) -> list[str]:
        """Why the gateway is not back to idle and healthy, if it is not."""
        problems = []
        auth = {"authorization": f"Bearer {API_KEY}"}
        # Fresh connections: a kept-alive one may have been closed by the gateway after a failure.
        if (health := httpx.get(f"{self.gw.url}/health", timeout=10)).status_code != 200:
            problems.append(f"/health answered {health.status_code}")
        if (ready := httpx.get(f"{self.gw.url}/ready", headers=auth, timeout=10)).status_code != 200:
            problems.append(f"/ready answered {ready.status_code}: {ready.text[:200]}")
        deadline = time.monotonic() + 10
        while self.gw.gateway.inflight or any(self.gw.metric("moa_inflight", endpoint=e) for e in ("p1", "p2", "agg")):
            if time.monotonic() > deadline:
                problems.append(f"still in flight: {self.gw.gateway.inflight} requests")
                break
            time.sleep(0.01)
        return problems

    def stop(self) -> None:
        self.http.close()
        self.gw.stop()
        for f in self.fakes:
            f.stop()


def judge(case: Case, response: httpx.Response) -> list[str]:
    """What is wrong with `response` as the answer to `case` (nothing: an empty list)."""
    status = response.status_code
    if status >= 500:
        return [f"status {status}: {response.text[:300]}"]
    if status == 400 and case.method in PARSER_REFUSES and response.text == "Invalid HTTP request received.":
        return []  # uvicorn's own answer to a method its parser does not know: the gateway never saw it
    if status >= 400:
        return [] if case.method == "HEAD" else _envelope_problems(case, response)
    if case.path == "/v1/chat/completions" and case.method == "POST" and status == 200:
        return _answer_problems(response)
    return []


def _envelope_problems(case: Case, response: httpx.Response) -> list[str]:
    if not response.headers.get("content-type", "").startswith("application/json"):
        return [f"{response.status_code} is not JSON: {response.headers.get('content-type')}"]
    try:
        error = response.json()["error"]
    except (ValueError, KeyError, TypeError):
        return [f"{response.status_code} without the error envelope: {response.text[:200]}"]
    if not isinstance(error, dict) or set(error) != ENVELOPE:
        return [f"{response.status_code} envelope has fields {sorted(error) if isinstance(error, dict) else error}"]
    if not isinstance(error["message"], str) or not error["message"] or "Traceback" in error["message"]:
        return [f"{response.status_code} message is unusable: {error['message']!r}"]
    param = error["param"]
    if case.param and response.status_code in (400, 404) and (param is None or str(param).split(".")[0] != case.param):
        return [f"{response.status_code} names param {param!r}, not {case.param!r}: {error['message'][:200]}"]
    return []


def _answer_problems(response: httpx.Response) -> list[str]:
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        text = response.text
        for line in text.splitlines():
            if line.startswith("data: {") and isinstance(json.loads(line[6:]).get("error"), dict):
                return [f"error event in a 200 stream: {line[:300]}"]
        return [] if text.endswith("data: [DONE]\n\n") else [f"stream without [DONE]: {text[-200:]}"]
    try:
        body: Any = response.json()
    except ValueError:
        return [f"200 answer is not JSON: {response.text[:200]}"]
    return [] if isinstance(body, dict) and body.get("choices") else [f"200 answer without choices: {body}"[:300]]


def explore(target: FuzzTarget, family: str, examples: int) -> list[Outcome]:
    """Run up to `examples` cases of `family` (fewer if hypothesis exhausts it); every outcome, never raising."""
    outcomes: list[Outcome] = []

    @settings(max_examples=examples, derandomize=True, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(FAMILIES[family])
    def run(case: Case) -> None:
        outcomes.append(target.try_case(case))

    run()
    return outcomes


def summary(outcomes: list[Outcome]) -> dict[str, Any]:
    """Counts by status, the problems (the first 20, described) and latency figures."""
    statuses: dict[str, int] = {}
    for o in outcomes:
        key = str(o.status)
        statuses[key] = statuses.get(key, 0) + 1
    bad = [o for o in outcomes if o.problems]
    times = sorted(o.seconds for o in outcomes)
    return {
        "requests": len(outcomes),
        "statuses": dict(sorted(statuses.items())),
        "server_errors": sum(1 for o in outcomes if o.status is None or o.status >= 500),
        "problems": len(bad),
        "examples": [{"case": o.case.describe(), "problems": o.problems} for o in bad[:20]],
        "max_s": round(times[-1], 3) if times else None,
        "p50_s": round(times[len(times) // 2], 4) if times else None,
    }


def dumps(data: Any) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False)
