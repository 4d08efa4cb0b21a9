"""Put a run's Markdown summary into docs/reliability.md, between its markers.

The document holds one block per run, `<!-- figures:NAME -->` ...
`<!-- /figures:NAME -->`; `publish` replaces what is between them with the
summary a script just wrote, so the figures in the document are always a
script's own output. `doc_for` says which document a run updates: the one
given with `--doc`, or docs/reliability.md when the run writes to its
default place (a trial run elsewhere leaves the document alone).
"""

from __future__ import annotations

import re
from pathlib import Path

DOC = Path("docs/reliability.md")


def doc_for(given: str | None, out: str, default_out: str) -> Path | None:
    if given:
        return Path(given)
    return DOC if out == default_out else None


def publish(doc: Path, name: str, markdown: str) -> None:
    text = doc.read_text(encoding="utf-8")
    pattern = re.compile(rf"(<!-- figures:{name} -->\n).*?(<!-- /figures:{name} -->)", re.DOTALL)
    if not pattern.search(text):
        raise SystemExit(f"{doc} has no <!-- figures:{name} --> block")
    doc.write_text(pattern.sub(lambda m: m.group(1) + markdown.rstrip() + "\n" + m.group(2), text), encoding="utf-8")
