"""Summarise a py-spy raw profile (`py-spy record -f raw`) as Markdown tables.

Three views of where the sampled process spent its time: by component (each
sample is charged to the component of the innermost frame that belongs to
one: a JSON parse inside the openai SDK counts as the SDK, a socket write
under the upstream client as that client), the functions with the most
inclusive time, and the functions with the most self time.

    python bench/profile_summary.py bench-out/fake/profile-overhead.txt
"""

from __future__ import annotations

import sys
from collections import Counter

# (component, path fragments); the innermost frame matching one of them decides.
COMPONENTS = (
    (
        "upstream HTTP client (moa_local/engines/upstream.py, asyncio streams, socket reads and writes)",
        ("moa_local/engines/upstream.py", "asyncio/streams.py"),
    ),
    ("the SDK's HTTP client (httpx2/httpcore2/anyio/h11: health probes)", ("httpx2/", "httpcore2/", "anyio/", "h11/")),
    ("openai SDK (request building, chunk objects)", ("openai/",)),
    ("metrics (prometheus_client)", ("prometheus_client/",)),
    ("logging", ("logging/",)),
    ("downstream HTTP server (uvicorn, starlette)", ("uvicorn/", "starlette/", "httptools")),
    ("moa-local's own code", ("moa_local/",)),
)


def read(path: str) -> list[tuple[list[str], int]]:
    stacks = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if stack and count.isdigit():
                stacks.append((stack.split(";"), int(count)))
    return stacks


def component(frames: list[str]) -> str:
    for frame in reversed(frames):
        for name, fragments in COMPONENTS:
            if any(fragment in frame for fragment in fragments):
                return name
    return "event loop and the rest"


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: profile_summary.py PROFILE.txt", file=sys.stderr)
        return 2
    try:
        stacks = read(argv[0])
    except (OSError, UnicodeDecodeError) as exc:
        print(f"profile_summary.py: {argv[0]}: cannot read ({exc})", file=sys.stderr)
        return 1
    total = sum(count for _, count in stacks)
    if not total:
        print(f"{argv[0]}: no samples", file=sys.stderr)
        return 1
    by_component: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    for frames, count in stacks:
        by_component[component(frames)] += count
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    print(f"{total} samples of `{argv[0]}`\n")
    print("| component | share of samples |\n|---|---:|")
    for name, count in by_component.most_common():
        print(f"| {name} | {100 * count / total:.1f}% |")
    print("\n| function (inclusive) | share |\n|---|---:|")
    skip = ("click/", "runners.py", "uvicorn/main.py", "uvicorn/server.py", "uvicorn/_compat.py", "<module>",
            "moa_local/cli/", "moa_local/api/server.py")  # fmt: skip
    shown = [(f, c) for f, c in inclusive.most_common() if not any(s in f for s in skip)]
    for frame, count in shown[:30]:
        print(f"| `{frame}` | {100 * count / total:.1f}% |")
    print("\n| function (self) | share |\n|---|---:|")
    for frame, count in own.most_common(20):
        print(f"| `{frame}` | {100 * count / total:.1f}% |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
