"""An OpenAI Batch input file of a benchmark's prompts, for `bench/batch.sh`.

Line i asks `--model` for an answer to prompt i of the dataset (taken in
turn, again from the start when there are fewer prompts than lines: as
`moa-local bench` and `bench/saturation.py --batch` take them), with the
aggregator's `max_tokens` and no temperature (each agent keeps its own),
so the batch does exactly the work of the direct batch it is compared with.
No `moa` trace is asked for: the answers are what a user would keep.

    python bench/batch_input.py --model moa-bench-balanced --prompts 96 --max-tokens 48 --out batch.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from moa_local.bench.dataset import Conversation, load_conversations
from moa_local.errors import MoaError


def batch_lines(conversations: Sequence[Conversation], model: str, count: int, max_tokens: int) -> list[dict[str, Any]]:
    """`count` request lines, custom_id `prompt-<i>`, prompt i taken as the bench takes it."""
    if not conversations:
        raise ValueError("no prompts to take")
    return [
        {
            "custom_id": f"prompt-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": model, "messages": conversations[i % len(conversations)], "max_tokens": max_tokens},
        }
        for i in range(count)
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--model", required=True, help="a mixture or an endpoint of the config")
    parser.add_argument("--prompts", type=int, required=True, help="request lines to write")
    parser.add_argument("--max-tokens", type=int, default=48, help="the aggregator's max_tokens (as the bench sends)")
    parser.add_argument("--dataset", default="builtin")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    if args.prompts < 1 or args.max_tokens < 1:
        parser.error("--prompts and --max-tokens must be at least 1")
    try:
        conversations = load_conversations(args.dataset)
    except MoaError as exc:
        print(f"batch_input.py: {exc}", file=sys.stderr)
        return 1
    if not conversations:
        print(f"batch_input.py: dataset '{args.dataset}' holds no prompt", file=sys.stderr)
        return 1
    lines = batch_lines(conversations, args.model, args.prompts, args.max_tokens)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
