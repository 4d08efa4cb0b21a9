"""Probing whether an engine continues a final assistant message, for `moa-local check`.

The aggregator's `start: staircase` continues its own answer: it sends the
conversation ending in its partial answer as an assistant message, with
vLLM's `continue_final_message: true` and `add_generation_prompt: false`.
The probe asks exactly that of an endpoint, once, on a prefix whose right
continuation is plain: the user asks to count from 1 to 20, the assistant
message holds "1 2 3 4 5" (temperature 0, 16 tokens at most).

The verdict rule (`judge`), on the text the engine returned:
- continues: the first thing in it, past spaces and separators (`,;.:-`),
  is the number 6: the prefix was taken as the start of the answer;
- restarts: the first number in it (standing alone, not the 1 of "w1")
  is 1: the engine began a new message
  (it ignored the parameters, or echoed the prefix back);
- unclear: anything else (no number, or another one first).
An engine that rejects the call (vLLM says why in a 400; other servers may
refuse unknown fields) is an error with the engine's reason.

Left out on purpose: deciding what a verdict means for a config (the
command's), and any probing of how well an engine continues beyond this.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from moa_local.config import Config
from moa_local.engines.failures import translate
from moa_local.engines.pool import Endpoint, EndpointPool
from moa_local.errors import MoaError
from moa_local.metrics import Metrics

CONTINUE_PARAMS: dict[str, Any] = {"continue_final_message": True, "add_generation_prompt": False}
PROBE_MESSAGES: list[dict[str, Any]] = [
    {"role": "user", "content": "Count from 1 to 20, separated by spaces."},
    {"role": "assistant", "content": "1 2 3 4 5"},
]
PROBE_MAX_TOKENS = 16
PROBE_TIMEOUT_S = 60.0  # one short answer; a busy CPU engine may take a while to fit it in

Verdict = Literal["continues", "restarts", "unclear", "error"]
_LEADING_NUMBER = re.compile(r"[\s,;.:-]*(\d+)")
_NUMBER = re.compile(r"\b\d+\b")  # a number standing alone: not the 1 of "w1"


@dataclass(frozen=True)
class ContinuationProbe:
    """One endpoint's answer to the probe: the verdict, and the text (or the error) it rests on."""

    verdict: Verdict
    text: str = ""
    reason: str = ""  # the error, when the verdict is "error"


def judge(text: str) -> Verdict:
    """The verdict on the text an engine returned to the probe (the rule is in the module docstring)."""
    leading = _LEADING_NUMBER.match(text)
    if leading and leading.group(1) == "6":
        return "continues"
    numbers = _NUMBER.findall(text)
    if numbers and numbers[0] == "1":
        return "restarts"
    return "unclear"


async def probe_continuation(endpoint: Endpoint, timeout_s: float = PROBE_TIMEOUT_S) -> ContinuationProbe:
    """Send the probe to one endpoint (no retry: one small call) and judge its answer."""
    try:
        completion = await endpoint.client.chat.completions.create(
            model=endpoint.config.model, messages=PROBE_MESSAGES,  # type: ignore[arg-type]
            temperature=0, max_tokens=PROBE_MAX_TOKENS, extra_body=CONTINUE_PARAMS, timeout=timeout_s,
        )  # fmt: skip
    except Exception as exc:  # translated once, here
        return ContinuationProbe("error", reason=translate(endpoint.name, exc, False).reason)
    text = (completion.choices[0].message.content or "") if completion.choices else ""
    return ContinuationProbe(judge(text), text)


async def probe_continuations(
    config: Config, names: Iterable[str], *, timeout_s: float = PROBE_TIMEOUT_S
) -> dict[str, ContinuationProbe]:
    """Probe the named endpoints of `config` at once, over a pool opened for the call.

    Each call has its own timeout; a MoaError when they together take longer than `timeout_s` (and a bit).
    """
    chosen = {name: config.endpoints[name] for name in names}
    async with EndpointPool(chosen, Metrics()) as pool:
        calls = [probe_continuation(pool[name], timeout_s) for name in chosen]
        try:
            probes = await asyncio.wait_for(asyncio.gather(*calls), timeout=timeout_s + 5)
        except TimeoutError:
            raise MoaError(f"the continuation probes took longer than {timeout_s:g} s") from None
    return dict(zip(chosen, probes, strict=True))
