"""One timed `moa-local batch` run over the engines of a config, for `bench/batch.sh`.

Removes the output and error files first (the command resumes into them
otherwise and would skip every line), runs `MOA batch --config F INPUT -o
OUTPUT --errors ERRORS` with its progress lines passed through to stderr,
and writes one JSON object: the command's wall time (from start to exit,
the Python start-up included: what a user waits), the answered and failed
lines, the generated tokens summed over the answers' `usage` (each body's
usage sums every engine call of the request, every sample of an `n`
call), generated tokens/s over the wall time, and each engine's figures
over the run from its `/metrics` (`moa_local.bench.engines`: generated
tokens, busy share, peaks of running and waiting requests), whose token
counts check the usage sum. The command's own summary lines are kept too.

On Ctrl-C the command gets the signal with us (same process group) and
stops cleanly; nothing is written then.

    python bench/batch_cli.py --moa .venv/bin/moa-local --config bench/cpu-bench.yaml \
        --input batch.jsonl --output answers.jsonl --out batch-cli.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Iterable
from contextlib import suppress
from pathlib import Path
from typing import Any

from moa_local.bench.engines import EngineWatch, metrics_url
from moa_local.config import load_config
from moa_local.errors import MoaError

STOP_GRACE_S = 60.0  # for the command to finish its lines after Ctrl-C


def usage_tokens(lines: Iterable[str]) -> tuple[int, int]:
    """(answered lines, completion tokens summed over their usage) of a batch output file's lines."""
    answered = tokens = 0
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        record = json.loads(line)
        response = record.get("response") or {}
        if record.get("error") is not None or response.get("status_code") != 200:
            raise ValueError(f"line {number}: not an answer ({record.get('error')})")
        answered += 1
        tokens += int(((response.get("body") or {}).get("usage") or {}).get("completion_tokens") or 0)
    return answered, tokens


def count_lines(path: Path) -> int:
    if not path.is_file():
        return 0
    with path.open(encoding="utf-8") as handle:
        return sum(1 for line in handle if line.strip())


async def run(command: list[str], engine_urls: tuple[str, ...]) -> tuple[int, float, list[str], list[Any]]:
    """Run the command under an EngineWatch: (exit code, wall s, its stdout lines, the engines' figures)."""
    output: list[str] = []
    async with EngineWatch(engine_urls) as watch:
        started = time.perf_counter()
        process = await asyncio.create_subprocess_exec(*command, stdout=asyncio.subprocess.PIPE)
        assert process.stdout is not None
        # A task of its own: on Ctrl-C it goes on passing the command's last lines (how to resume) on.
        forwarding = asyncio.create_task(forward(process.stdout, output))
        try:
            code = await process.wait()
        finally:
            if process.returncode is None:  # interrupted: it got the signal too; let it write its last lines
                with suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(process.wait()), STOP_GRACE_S)
                if process.returncode is None:
                    process.kill()
                    await process.wait()
            await forwarding
        wall_s = time.perf_counter() - started
    return code, wall_s, output, watch.figures(wall_s)


async def forward(stream: asyncio.StreamReader, output: list[str]) -> None:
    async for raw in stream:
        line = raw.decode("utf-8", "replace").rstrip("\n")
        output.append(line)
        print(line, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--moa", default="moa-local", help="the moa-local command")
    parser.add_argument("--config", required=True)
    parser.add_argument("--input", required=True, type=Path)
    parser.add_argument("--output", required=True, type=Path, help="the answers (removed first)")
    parser.add_argument("--out", required=True, type=Path, help="the JSON result")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
    except MoaError as exc:
        print(f"batch_cli.py: {exc}", file=sys.stderr)
        return 1
    errors = args.output.with_name(args.output.name.removesuffix(".jsonl") + ".errors.jsonl")
    for path in (args.output, errors):
        path.unlink(missing_ok=True)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    engines = tuple(dict.fromkeys(metrics_url(e.base_url) for e in config.endpoints.values()))  # once per engine
    command = [args.moa, "batch", "--config", args.config, str(args.input), "-o", str(args.output),
               "--errors", str(errors)]  # fmt: skip
    try:
        code, wall_s, output, figures = asyncio.run(run(command, engines))
    except KeyboardInterrupt:
        return 130
    if code != 0:
        print(f"batch_cli.py: {args.moa} batch exited with {code}", file=sys.stderr)
        return 1
    with args.output.open(encoding="utf-8") as handle:
        answered, tokens = usage_tokens(handle)
    generated = [e["generated_tokens"] for e in figures]
    result = {
        "command": command,
        "prompts": count_lines(args.input),
        "answered": answered,
        "errors": count_lines(errors),
        "wall_s": wall_s,
        "completion_tokens": tokens,
        "generated_tokens_per_s": tokens / wall_s,
        # The engines' own count over the same time: the usage sum's check (other load would show here).
        "engine_generated_tokens_per_s": sum(generated) / wall_s if None not in generated else None,
        "engines": figures,
        "summary": output[-4:],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"moa-local batch of {answered} lines: {tokens / wall_s:.1f} generated tok/s in {wall_s:.0f} s, "
          f"{result['errors']} errors", file=sys.stderr)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
