"""Batch API test helpers: input lines, JSONL bytes, waiting for a batch, reading its result files.

    data = jsonl(request("a", "mix", "hello"), request("b", "p1", "hi"))
    batch = client.batches.create(input_file_id=client.files.create(file=("in.jsonl", data), purpose="batch").id, ...)
    batch = wait_batch(client, batch.id)                  # bounded polling until it has ended
    out, errors = results(client, batch)                  # the records of its output and error files
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import openai
from openai.types import Batch

ENDED = ("completed", "failed", "expired", "cancelled")


def request(custom_id: str, model: str, prompt: str, **body: Any) -> dict[str, Any]:
    """One input line: a chat completion of `prompt` by `model`."""
    messages = [{"role": "user", "content": prompt}]
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": model, "messages": messages, **body}}  # fmt: skip


def jsonl(*lines: dict[str, Any] | str) -> bytes:
    """The lines as a JSONL file; a str line is taken as written (a bad line, say)."""
    return "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines).encode()


def wait_until(
    check: Callable[[], bool], timeout_s: float = 30.0, what: str = "condition", interval_s: float = 0.02
) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not true within {timeout_s} s")
        time.sleep(interval_s)


def wait_batch(
    client: openai.OpenAI, batch_id: str, until: tuple[str, ...] = ENDED, timeout_s: float = 30.0,
    interval_s: float = 0.02,
) -> Batch:  # fmt: skip
    """The batch once its status is one of `until` (bounded polling, every `interval_s`)."""
    seen: list[Batch] = []

    def ended() -> bool:
        seen.append(client.batches.retrieve(batch_id))
        return seen[-1].status in until

    wait_until(ended, timeout_s, f"batch {batch_id} in {until} (last: {seen[-1].status if seen else None})",
               interval_s)  # fmt: skip
    return seen[-1]


def records(client: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    """The JSON lines of a file (none for no file)."""
    if file_id is None:
        return []
    text = client.files.content(file_id).text
    assert text.endswith("\n"), "a result file ends with a complete line"
    return [json.loads(line) for line in text.splitlines()]


def results(client: openai.OpenAI, batch: Batch) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    return records(client, batch.output_file_id), records(client, batch.error_file_id)
