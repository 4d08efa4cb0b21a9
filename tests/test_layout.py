"""The package's layout, enforced: imports go down one table of layers, no cycles, short modules.

Every `import` and `from ... import` of every module under moa_local/ counts,
wherever it sits (inside a function, under `if TYPE_CHECKING:`): a deferred
import is still a dependency. `MAY_IMPORT` is the one table of layers (DESIGN.md
§2); a new subpackage must get a row before its first module lands. A module
over `MAX_LINES` lines passes only if its docstring says why, on a line
containing `LONG_MARKER` ("Longer than 300 lines: the SSE state machine is one
piece", say). The third-party imports must be exactly pyproject's
dependencies (optional ones: brought by a declared requirement). Left out:
dynamic imports through importlib.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "moa_local"
MAX_LINES = 300
LONG_MARKER = "longer than 300 lines"  # matched case-insensitively in the module docstring

# Which parts each part may import; a part may always import its own modules.
# "base" is every top-level module of moa_local (errors, metrics, paths, urls, ...) and BASE_PACKAGES.
MAY_IMPORT: dict[str, frozenset[str]] = {
    "__main__": frozenset({"cli"}),  # `python -m moa_local`
    "cli": frozenset({"api", "evaluation", "jobs", "engines", "mixture", "deploy", "bench", "base"}),
    "api": frozenset({"jobs", "engines", "mixture", "base"}),
    "evaluation": frozenset({"jobs", "base"}),
    "jobs": frozenset({"engines", "mixture", "base"}),
    "engines": frozenset({"mixture", "base"}),
    "mixture": frozenset({"base"}),
    "deploy": frozenset({"base"}),
    "bench": frozenset({"testing", "base"}),
    "testing": frozenset(),
    "base": frozenset(),  # base modules import each other, without cycles
}
BASE_PACKAGES = frozenset({"config"})
# Distribution name -> import name, where they differ.
IMPORT_NAMES = {"pyyaml": "yaml", "prometheus-client": "prometheus_client"}
# Imported under `except ImportError:` -> the requirement (dependency or extra) that brings it.
OPTIONAL_IMPORTS = {
    "uvloop": "uvicorn[standard]",
    "matplotlib": "matplotlib",
    "lm_eval": "lm-eval",  # the `eval` extra
    "nltk": "lm-eval",
    "langdetect": "lm-eval",  # lm-eval[ifeval]: the checkers' language detection, seeded by moa_local
    "reasoning_gym": "reasoning-gym",
}


@dataclass(frozen=True)
class Import:
    source: str  # the importing module, dotted
    target: str  # the imported module of the package, dotted
    line: int


def part_of(module: str) -> str:
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in MAY_IMPORT:
        return parts[1]
    return "base"


def module_files() -> dict[str, Path]:
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def imports_of(module: str, path: Path, known: Iterable[str]) -> list[Import]:
    known = set(known)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            # `from moa_local.deploy import launcher` imports the module moa_local.deploy.launcher
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        ours = [t for t in dict.fromkeys(targets) if t == "moa_local" or t.startswith("moa_local.")]
        found += [Import(module, target, node.lineno) for target in ours]
    return found


def package_graph() -> list[Import]:
    modules = module_files()
    return [imp for name, path in modules.items() for imp in imports_of(name, path, modules)]


def wrong_way(graph: Iterable[Import]) -> list[str]:
    problems = []
    for imp in graph:
        source, target = part_of(imp.source), part_of(imp.target)
        if target != source and target not in MAY_IMPORT[source]:
            allowed = ", ".join(sorted(MAY_IMPORT[source])) or "nothing of the package"
            problems.append(
                f"{imp.source}, line {imp.line}: imports {imp.target} ({target}); {source} may import {allowed}"
            )
    return problems


def cycles(graph: Iterable[Import]) -> list[str]:
    """One message per strongly connected group of modules, listing the imports inside it."""
    edges: dict[str, list[Import]] = {}
    for imp in graph:
        edges.setdefault(imp.source, []).append(imp)
        edges.setdefault(imp.target, [])
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[set[str]] = []

    def visit(node: str) -> None:  # Tarjan's algorithm
        index[node] = low[node] = len(index)
        stack.append(node)
        for imp in edges[node]:
            if imp.target not in index:
                visit(imp.target)
                low[node] = min(low[node], low[imp.target])
            elif imp.target in stack:
                low[node] = min(low[node], index[imp.target])
        if low[node] == index[node]:
            group: set[str] = set()
            while not group or node not in group:
                group.add(stack.pop())
            groups.append(group)

    for node in sorted(edges):
        if node not in index:
            visit(node)
    problems = []
    for group in groups:
        inside = sorted(
            (imp for name in group for imp in edges[name] if imp.target in group), key=lambda i: (i.source, i.line)
        )
        if inside:
            links = "; ".join(f"{imp.source}, line {imp.line} -> {imp.target}" for imp in inside)
            problems.append(f"import cycle among {', '.join(sorted(group))}: {links}")
    return sorted(problems)


def length_problem(name: str, text: str) -> str | None:
    lines = len(text.splitlines())
    docstring = ast.get_docstring(ast.parse(text)) or ""
    if lines <= MAX_LINES or LONG_MARKER in docstring.lower():
        return None
    return f"{name}: {lines} lines (over {MAX_LINES}) and its docstring has no line saying '{LONG_MARKER}: why'"


def third_party_imports() -> set[str]:
    names = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names |= {alias.name.partition(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.partition(".")[0])
    return names - set(sys.stdlib_module_names) - {"moa_local"}


def import_name(requirement: str) -> str:
    match = re.match(r"[A-Za-z0-9_.-]+", requirement)
    assert match is not None, requirement
    name = match.group().lower()
    return IMPORT_NAMES.get(name, name.replace("-", "_"))


def test_dependencies_are_exactly_what_the_package_imports() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    required = {import_name(requirement) for requirement in project["dependencies"]}
    imported = third_party_imports()
    assert imported - OPTIONAL_IMPORTS.keys() == required, "pyproject's dependencies are not what moa_local imports"
    everything = [*project["dependencies"], *(r for extra in project["optional-dependencies"].values() for r in extra)]
    for name, provider in OPTIONAL_IMPORTS.items():
        assert any(requirement.startswith(provider) for requirement in everything), f"{name} needs {provider}"


IMPORT_EVERYTHING = """
import importlib, logging, os, sys, threading
for name in sys.argv[1:]:
    importlib.import_module(name)
sockets = 0
for fd in os.listdir("/proc/self/fd"):
    try:
        sockets += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
    except OSError:  # the listing's own descriptor, closed by now
        pass
print(threading.active_count(), len(logging.getLogger().handlers), sockets)
"""


def test_importing_the_package_starts_nothing() -> None:
    """No threads, no logging set-up, no sockets (apps and clients) at import time."""
    names = [name for name in module_files() if name != "moa_local.__main__"]  # that one runs the CLI, by design
    done = subprocess.run(
        [sys.executable, "-c", IMPORT_EVERYTHING, *names], capture_output=True, text=True, cwd=ROOT, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1", "0", "0"], "threads, root log handlers, sockets after import"


def test_every_subpackage_has_a_row_in_the_table() -> None:
    subpackages = {path.parent.name for path in PACKAGE.glob("*/__init__.py")}
    assert subpackages - MAY_IMPORT.keys() - BASE_PACKAGES == set(), "give the new subpackage a layer in MAY_IMPORT"


def test_imports_go_down_the_layers() -> None:
    problems = wrong_way(package_graph())
    assert not problems, "\n".join(problems)


def test_no_import_cycles() -> None:
    problems = cycles(package_graph())
    assert not problems, "\n".join(problems)


def test_modules_are_short_or_say_why() -> None:
    found = [length_problem(name, path.read_text(encoding="utf-8")) for name, path in module_files().items()]
    problems = [problem for problem in found if problem]
    assert not problems, "\n".join(problems)


def test_the_scan_sees_deferred_and_type_checking_imports() -> None:
    sources = {(imp.source, imp.target) for imp in package_graph()}
    assert ("moa_local.metrics", "moa_local.config") in sources  # under TYPE_CHECKING
    assert ("moa_local.cli.engines", "moa_local.deploy.launcher") in sources  # `from moa_local.deploy import launcher`


def test_the_table_catches_wrong_way_imports() -> None:
    graph = [
        Import("moa_local.api.app", "moa_local.engines.pool", 1),
        Import("moa_local.bench.runner", "moa_local.testing.fake_engine", 2),
        Import("moa_local.mixture.pipeline", "moa_local.config", 3),
        Import("moa_local.metrics", "moa_local.config", 4),
        Import("moa_local.__main__", "moa_local.cli", 5),
        Import("moa_local.mixture.pipeline", "moa_local.engines.pool", 6),
        Import("moa_local.testing.fake_engine", "moa_local.errors", 7),
        Import("moa_local.evaluation.suite", "moa_local.api.app", 8),
        Import("moa_local.deploy.plan", "moa_local.mixture.spec", 9),
        Import("moa_local.urls", "moa_local.cli.main", 10),
    ]
    assert wrong_way(graph) == [
        "moa_local.mixture.pipeline, line 6: imports moa_local.engines.pool (engines); mixture may import base",
        "moa_local.testing.fake_engine, line 7: imports moa_local.errors (base); testing may import nothing of the"
        " package",
        "moa_local.evaluation.suite, line 8: imports moa_local.api.app (api); evaluation may import base, jobs",
        "moa_local.deploy.plan, line 9: imports moa_local.mixture.spec (mixture); deploy may import base",
        "moa_local.urls, line 10: imports moa_local.cli.main (cli); base may import nothing of the package",
    ]


def test_the_table_catches_cycles_even_within_a_layer() -> None:
    graph = [
        Import("moa_local.errors", "moa_local.urls", 3),
        Import("moa_local.urls", "moa_local.paths", 4),
        Import("moa_local.paths", "moa_local.errors", 5),
        Import("moa_local.bench.report", "moa_local.bench.stats", 6),
        Import("moa_local.bench.runner", "moa_local.bench.stats", 7),
    ]
    assert cycles(graph) == [
        "import cycle among moa_local.errors, moa_local.paths, moa_local.urls: moa_local.errors, line 3 ->"
        " moa_local.urls; moa_local.paths, line 5 -> moa_local.errors; moa_local.urls, line 4 -> moa_local.paths"
    ]
    assert cycles(graph[3:]) == []


@pytest.mark.parametrize(
    ("docstring", "lines", "passes"),
    [
        ("A module.", 300, True),
        ("A module.", 301, False),
        ("A module.\n\nLonger than 300 lines: one state machine.", 301, True),
    ],
)
def test_the_length_rule(docstring: str, lines: int, passes: bool) -> None:
    text = f'"""{docstring}"""\n' + "x = 1\n" * (lines - docstring.count("\n") - 1)
    assert len(text.splitlines()) == lines
    assert (length_problem("moa_local.example", text) is None) == passes


def test_relative_imports_resolve_to_package_modules(tmp_path: Path) -> None:
    module = tmp_path / "app.py"
    module.write_text("from . import protocol\nfrom ..mixture.spec import Overrides\nimport os\n", encoding="utf-8")
    known = {"moa_local.api.protocol", "moa_local.mixture.spec"}
    assert imports_of("moa_local.api.app", module, known) == [
        Import("moa_local.api.app", "moa_local.api.protocol", 1),
        Import("moa_local.api.app", "moa_local.mixture.spec", 2),
    ]
