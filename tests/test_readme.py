"""The README's promises: its two set-up commands, what CI runs, and the client snippets."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_readme_opens_with_exactly_the_two_setup_commands() -> None:
    first_block = re.search(r"```\w*\n(.*?)```", README, re.S)
    assert first_block is not None
    assert README.index("```") < README.index("\n## "), "the commands come before any section"
    commands = [line.split("#")[0].strip() for line in first_block.group(1).splitlines() if line.strip()]
    assert commands == ["make demo", "make test"]


def test_ci_runs_the_readme_test_command() -> None:
    script = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert re.search(r"^exec make test$", script, re.M)


def test_readme_shows_the_tested_client_snippets_verbatim() -> None:
    for name in ("client-snippet.py", "client-snippet.sh"):
        snippet = (ROOT / "docs" / name).read_text(encoding="utf-8").rstrip()
        assert snippet in README, f"README is out of date with docs/{name}"


def test_makefile_has_the_readme_targets() -> None:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert re.search(r"^demo:", makefile, re.M) and re.search(r"^test:", makefile, re.M)
