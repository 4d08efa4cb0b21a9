"""Copy a run's plots, summaries and results into the docs (docs/bench/).

Every folder of the run that holds a `results.json` is copied as
`<dest>/<path with / as ->/` with its PNGs, `summary.md` and
`results.json` (not the raw records); the batch scripts' JSON files,
profile summaries, load notes and `targets.md` are copied as they are.

    python bench/publish.py bench-out/20261121-070000 docs/bench
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: publish.py OUT_DIR DEST_DIR", file=sys.stderr)
        return 2
    out, dest = Path(argv[0]), Path(argv[1])
    if not out.is_dir():
        print(f"publish.py: {out}: no such folder", file=sys.stderr)
        return 1
    dest.mkdir(parents=True, exist_ok=True)
    copied = 0
    for results in sorted(out.rglob("results.json")):
        run = results.parent
        if run.name.startswith("profile-"):  # the loads run only to be sampled
            continue
        target = dest / "-".join(run.relative_to(out).parts)
        target.mkdir(exist_ok=True)
        files = [results] if "passthrough" in run.parts else [results, run / "summary.md", *sorted(run.glob("*.png"))]
        for path in files:
            if path.is_file():
                shutil.copy2(path, target / path.name)
                copied += 1
    extras = ["targets.md", "targets.json", "fake/load-before.txt", "fake/load-after.txt",
              "cpu/load-before.txt", "cpu/load-after.txt"]  # fmt: skip
    extras += [str(p.relative_to(out)) for p in sorted(out.glob("cpu/*.json"))]
    extras += [str(p.relative_to(out)) for p in sorted(out.glob("fake/profile-*.md"))]
    for name in extras:
        path = out / name
        if path.is_file():
            shutil.copy2(path, dest / "-".join(Path(name).parts))
            copied += 1
    print(f"copied {copied} files to {dest}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
