"""The judge: an endpoint of the config or an OpenAI-compatible URL, called directly over HTTP.

`resolve_judge` turns `--judge NAME|URL` into base URL, served model, key
and timeout (a URL's model is `--judge-model`, or the only model its
`/models` lists). `JudgeClient` is the judge suites' executor for the batch
runner: one pooled httpx client with a timeout per call, each request body
sent to `<base_url>/chat/completions` as it is (temperature 0 is set by the
suites), the answer returned as (status, body) and every transport failure
as a 502 envelope, so a failed judgment is a line of the judge's error
file, never an exception. It calls the engine directly rather than through
the gateway's pipeline because the AlpacaEval judge needs `logprobs`,
which the gateway refuses.

`parse_rating` reads MT-Bench's `[[rating]]` (FastChat's rule: the first
`[[x]]`, else the first `[x]`; 1 to 10, else unrated). `parse_preference`
reads an AlpacaEval judgment: the probability of "m" over "m" and "M" from
the first token's top log-probabilities (as AlpacaEval's `logprob_parser`
with `is_binarize: false`), or the generated token when the judge sent no
log-probabilities; None when neither says m or M.

Left out on purpose: retries (a failed judgment is reported; delete the
judge's error file and rerun to try again) and the prompts (the suites').
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import httpx

from moa_local.config import Config
from moa_local.evaluation.errors import EvalError

PROBE_TIMEOUT_S = 10.0
_RATING = re.compile(r"\[\[(\d+\.?\d*)\]\]")
_RATING_BACKUP = re.compile(r"\[(\d+\.?\d*)\]")


@dataclass(frozen=True)
class Judge:
    name: str  # the endpoint name, or the URL
    base_url: str
    model: str | None
    api_key: str = ""
    timeout_s: float = 300.0
    endpoint: str | None = None  # the config endpoint it is, if any

    def describe(self) -> str:
        where = f"endpoint {self.endpoint}" if self.endpoint else self.base_url
        return f"{self.model} at {where}"


def resolve_judge(spec: str, config: Config, model: str | None = None) -> Judge:
    """`--judge`: an endpoint name of the config, or an http(s) URL of an OpenAI-compatible server."""
    endpoint = config.endpoints.get(spec)
    if endpoint is not None:
        return Judge(spec, endpoint.base_url, model or endpoint.model, endpoint.resolved_api_key(),
                     max(endpoint.timeout_s, 60.0), spec)  # fmt: skip
    if spec.startswith(("http://", "https://")):
        return Judge(spec, spec.rstrip("/"), model)
    if spec in config.mixtures:
        raise EvalError(f"judge '{spec}' is a mixture; a judge must be an endpoint of the config or a URL")
    known = ", ".join(config.endpoints)
    raise EvalError(f"judge '{spec}': not an endpoint of the config ({known}) nor an http(s) URL")


async def probe(judge: Judge) -> Judge:
    """The judge, checked to answer `GET /models`, with its model filled in; EvalError naming why not."""
    headers = {"Authorization": f"Bearer {judge.api_key}"} if judge.api_key else {}
    try:
        async with httpx.AsyncClient(timeout=PROBE_TIMEOUT_S) as client:
            response = await client.get(f"{judge.base_url}/models", headers=headers)
    except httpx.HTTPError as exc:
        raise EvalError(f"judge {judge.name}: unreachable at {judge.base_url} ({_reason(exc)})") from None
    if response.status_code != 200:
        raise EvalError(f"judge {judge.name}: GET {judge.base_url}/models answered {response.status_code}")
    if judge.model is not None:
        return judge
    try:
        models = [str(row["id"]) for row in response.json()["data"]]
    except (ValueError, KeyError, TypeError):
        models = []
    if len(models) != 1:
        raise EvalError(f"judge {judge.name}: serves {len(models)} models ({', '.join(models)}); name one with "
                        "--judge-model")  # fmt: skip
    return Judge(judge.name, judge.base_url, models[0], judge.api_key, judge.timeout_s, judge.endpoint)


class JudgeClient:
    """The judge's executor for the batch runner: `await client(body, request_id) -> (status, body)`."""

    def __init__(self, judge: Judge) -> None:
        self.judge = judge
        self._client: httpx.AsyncClient | None = None

    async def __aenter__(self) -> JudgeClient:
        headers = {"Authorization": f"Bearer {self.judge.api_key}"} if self.judge.api_key else {}
        self._client = httpx.AsyncClient(timeout=self.judge.timeout_s, headers=headers)
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._client is not None:
            await self._client.aclose()

    async def __call__(self, body: dict[str, Any], request_id: str) -> tuple[int, dict[str, Any]]:
        assert self._client is not None, "use JudgeClient as an async context manager"
        url = f"{self.judge.base_url}/chat/completions"
        try:
            response = await self._client.post(url, json={**body, "model": self.judge.model})
        except httpx.HTTPError as exc:
            return 502, _envelope(f"judge {self.judge.name}: {_reason(exc)}", "judge_unreachable")
        try:
            answer = response.json()
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            return 502, _envelope(
                f"judge {self.judge.name}: answered {response.status_code} without JSON", "judge_error"
            )
        if response.status_code != 200:
            message = (answer.get("error") or {}).get("message") if isinstance(answer.get("error"), dict) else None
            text = f"judge {self.judge.name}: answered {response.status_code}: {message or 'no message'}"
            return response.status_code, _envelope(text, "judge_error")
        return 200, answer


def parse_rating(text: str) -> float | None:
    """MT-Bench's rating: the first `[[x]]`, else the first `[x]`; None unless 1 <= x <= 10."""
    match = _RATING.search(text) or _RATING_BACKUP.search(text)
    if match is None:
        return None
    rating = float(match.group(1))
    return rating if 1.0 <= rating <= 10.0 else None


def parse_preference(body: dict[str, Any] | None) -> tuple[float | None, bool]:
    """(probability that output "m" is better, weighted by log-probabilities?) of an AlpacaEval judgment."""
    choice = ((body or {}).get("choices") or [{}])[0]
    content = (choice.get("logprobs") or {}).get("content") or []
    top = content[0].get("top_logprobs") if content and isinstance(content[0], dict) else None
    if top:
        logprobs = {row.get("token"): row.get("logprob") for row in top if row.get("token") in ("m", "M")}
        if logprobs:
            m = math.exp(logprobs["m"]) if logprobs.get("m") is not None else 0.0
            big = math.exp(logprobs["M"]) if logprobs.get("M") is not None else 0.0
            if m + big > 0:
                return m / (m + big), True
    token = str((choice.get("message") or {}).get("content") or "").strip()
    if token == "m":
        return 1.0, False
    if token == "M":
        return 0.0, False
    return None, False


def _envelope(message: str, code: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": "server_error", "param": None, "code": code}}


def _reason(exc: httpx.HTTPError) -> str:
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    if isinstance(exc, httpx.ConnectError):
        return "connection refused"
    return str(exc) or type(exc).__name__
