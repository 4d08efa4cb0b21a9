"""The README's promises: its two set-up commands, what CI runs, and the files it quotes.

The client snippets are quoted whole; the config example is an excerpt of
configs/cpu.yaml: its lines, comments aside, appear in the file in order.
"""

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
    blocks = [block.rstrip("\n") for block in re.findall(r"^```[\w-]*\n(.*?)^```", README, re.S | re.M)]
    for name in ("client-snippet.py", "client-snippet.sh"):
        snippet = (ROOT / "docs" / name).read_text(encoding="utf-8").rstrip("\n")
        assert snippet in blocks, f"no README code block is exactly docs/{name}"


def yaml_lines(text: str) -> list[str]:
    """Non-blank lines with comments removed (a `#` outside quotes, at a line's start or after a space)."""
    lines = []
    for line in text.splitlines():
        quote = None
        for i, char in enumerate(line):
            if quote:
                quote = None if char == quote else quote
            elif char in "'\"":
                quote = char
            elif char == "#" and (i == 0 or line[i - 1].isspace()):
                line = line[:i]
                break
        if line.strip():
            lines.append(line.rstrip())
    return lines


def unquoted(excerpt: list[str], whole: list[str]) -> list[str]:
    """The excerpt's lines that do not appear in `whole` in order (each matched after the one before)."""
    missing, at = [], 0
    for line in excerpt:
        try:
            at = whole.index(line, at) + 1
        except ValueError:
            missing.append(line)
    return missing


def test_the_readme_config_example_is_an_excerpt_of_configs_cpu_yaml() -> None:
    section = README[README.index("\n## Configuration\n") :]
    block = re.search(r"```yaml\n(.*?)```", section[: section.index("\n## ", 1)], re.S)
    assert block is not None, "the Configuration section shows a yaml block"
    config = (ROOT / "configs" / "cpu.yaml").read_text(encoding="utf-8")
    missing = unquoted(yaml_lines(block.group(1)), yaml_lines(config))
    assert not missing, "README lines not in configs/cpu.yaml (in order):\n" + "\n".join(missing)


def test_an_excerpt_keeps_the_order_and_ignores_comments() -> None:
    whole = yaml_lines("a:  # x\n  b: '#1'\n\n  c: 2\n")
    assert whole == ["a:", "  b: '#1'", "  c: 2"]
    assert unquoted(["a:", "  c: 2"], whole) == []
    assert unquoted(["  c: 2", "  b: '#1'"], whole) == ["  b: '#1'"]


def test_makefile_has_the_readme_targets() -> None:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert re.search(r"^demo:", makefile, re.M) and re.search(r"^test:", makefile, re.M)
