"""The package's layout: imports point one way, and no module imports itself back.

    cli -> server | sidecar -> vault -> store | integrity | media -> ext (callvault._*)

Base modules (top-level ``callvault/*.py`` such as errors, durable, timeline) sit
below everything and import only each other. Within one level, integrity may read
store's and media's formats (the offline bundle verifier decrypts records and
reads Ogg); nothing else crosses sideways (server and sidecar never import each
other). Every import counts, also those inside functions and under
``TYPE_CHECKING``: a lazy import is still a dependency. The compiled modules'
sources (ext/*.pyx) are checked too. README.md "Architecture" draws the same.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "engine" / "callvault"
EXT = ROOT / "ext"

# level of each top-level part of callvault; a part may import strictly lower levels
LEVELS = {
    "cli": 6,
    "server": 5,
    "sidecar": 5,
    "access": 4,  # identities, tokens, roles, audit trail (over the vault)
    "lifecycle": 4,  # recording rules, consent (over the vault)
    "vault": 3,
    "store": 2,
    "integrity": 2,
    "media": 2,
    "ext": 1,  # callvault._* (ext/*.pyx)
    "base": 0,  # callvault/*.py that are not a subpackage
}
SIDEWAYS = {("integrity", "store"), ("integrity", "media")}


@dataclass(frozen=True)
class Import:
    module: str  # the importing module, dotted
    target: str  # the imported module, dotted (most specific that exists)
    line: int
    top_level: bool  # at module level (runs at import time), not inside a function


def part(module: str) -> str:
    """The layout part a dotted callvault module belongs to."""
    parts = module.split(".")
    if len(parts) == 1:
        return "base"
    head = parts[1]
    if head.startswith("_"):
        return "ext"
    if len(parts) == 2 and head not in LEVELS:
        return "base"
    return head


def module_name(path: Path, package: Path) -> str:
    rel = path.relative_to(package.parent).with_suffix("")
    names = list(rel.parts)
    if names[-1] == "__init__":
        names.pop()
    return ".".join(names)


def _resolve(name: str, modules: set[str]) -> str:
    """The most specific existing module of a dotted name (``a.b.C`` -> ``a.b``)."""
    while name and name not in modules and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def python_imports(path: Path, package: Path, modules: set[str]) -> list[Import]:
    me = module_name(path, package)
    is_pkg = path.name == "__init__.py"
    tree = ast.parse(path.read_text(), str(path))
    found: list[Import] = []
    top = {id(n) for n in tree.body}
    # statements under a module-level `if`/`try` still run at import time, except
    # `if TYPE_CHECKING:` (type-only: it counts for direction, not for cycles)
    for n in tree.body:
        if isinstance(n, ast.If) and _is_type_checking(n.test):
            continue
        if isinstance(n, ast.If | ast.Try):
            top |= {id(s) for s in ast.walk(n) if isinstance(s, ast.Import | ast.ImportFrom)}
    for node in ast.walk(tree):
        targets: list[str] = []
        if not isinstance(node, ast.Import | ast.ImportFrom):
            continue
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            base = node.module or ""
            if node.level:
                anchor = me.split(".") if is_pkg else me.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{a.name}" for a in node.names]
        for t in targets:
            if t.split(".")[0] != package.name:
                continue
            found.append(Import(me, _resolve(t, modules), node.lineno, id(node) in top))
    return found


PYX_IMPORT = re.compile(
    r"^\s*(?:from\s+(callvault[\w.]*)\s+import\s+([\w, ()]+)|import\s+(callvault[\w.]*))"
)


def pyx_imports(path: Path, modules: set[str]) -> list[Import]:
    me = f"callvault.{path.stem}"
    found = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        m = PYX_IMPORT.match(line)
        if m:
            target = m.group(1) or m.group(3)
            found.append(Import(me, _resolve(target, modules), i, not line[0].isspace()))
    return found


def scan(package: Path, ext: Path | None) -> list[Import]:
    files = sorted(package.rglob("*.py"))
    modules = {module_name(f, package) for f in files}
    modules |= {f"{package.name}.{p.stem}" for p in (ext.glob("*.pyx") if ext else [])}
    imports = [i for f in files for i in python_imports(f, package, modules)]
    if ext:
        imports += [i for f in sorted(ext.glob("*.pyx")) for i in pyx_imports(f, modules)]
    return imports


def direction_violations(imports: list[Import]) -> list[str]:
    bad = []
    for i in imports:
        a, b = part(i.module), part(i.target)
        if a == b or LEVELS[b] < LEVELS[a] or (a, b) in SIDEWAYS:
            continue
        bad.append(f"{i.module}:{i.line} ({a}) imports {i.target} ({b})")
    return bad


def cycles(imports: list[Import]) -> list[list[str]]:
    """Strongly connected components of more than one module among import-time edges."""
    graph: dict[str, set[str]] = {}
    for i in imports:
        if i.top_level and i.target != i.module:
            graph.setdefault(i.module, set()).add(i.target)
            graph.setdefault(i.target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan; the graph is small
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def package_cycles(imports: list[Import]) -> list[list[str]]:
    """Cycles between layout parts, lazy imports included."""
    parts = [
        Import(part(i.module), part(i.target), i.line, True)
        for i in imports
        if part(i.module) != part(i.target)
    ]
    return cycles(parts)


def test_imports_point_down() -> None:
    imports = scan(PACKAGE, EXT)
    assert len(imports) > 50, "the scanner found too few imports to be looking at the package"
    assert direction_violations(imports) == []


def test_no_import_cycle_between_modules() -> None:
    assert cycles(scan(PACKAGE, EXT)) == []


def test_no_cycle_between_parts() -> None:
    assert package_cycles(scan(PACKAGE, EXT)) == []


def test_the_package_is_engine_callvault() -> None:
    """No path tricks: the import name resolves to engine/callvault/ in the dev venv."""
    import callvault

    assert Path(callvault.__file__).resolve().parent == PACKAGE


def test_every_part_is_known() -> None:
    """A new subpackage gets a level here (and a line in README's architecture)."""
    subpackages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    assert subpackages <= set(LEVELS), subpackages - set(LEVELS)


def test_every_package_says_what_it_owns() -> None:
    for init in sorted(PACKAGE.rglob("__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and len(doc) > 60, f"{init.relative_to(ROOT)} has no docstring of its role"


# -- the checker itself finds what it is for --------------------------------------------


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    pkg = tmp_path / "callvault"
    for name, text in files.items():
        p = pkg / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return pkg


@pytest.mark.parametrize(
    ("files", "want"),
    [
        # an upward import hidden inside a function
        (
            {
                "__init__.py": "",
                "store/__init__.py": "",
                "store/seg.py": "def f():\n    from callvault.vault import Vault\n",
                "vault/__init__.py": "from callvault.store import seg\n",
            },
            "callvault.store.seg:2 (store) imports callvault.vault (vault)",
        ),
        # server and sidecar are one level: neither imports the other
        (
            {
                "__init__.py": "",
                "server/__init__.py": "",
                "sidecar/__init__.py": "",
                "sidecar/fwd.py": "from ..server import app\n",
                "server/app.py": "",
            },
            "callvault.sidecar.fwd:1 (sidecar) imports callvault.server.app (server)",
        ),
        # a base module must not reach up
        (
            {"__init__.py": "", "errors.py": "import callvault.media.wav\n", "media/wav.py": ""},
            "callvault.errors:1 (base) imports callvault.media.wav (media)",
        ),
    ],
)
def test_checker_finds_upward_imports(tmp_path: Path, files: dict[str, str], want: str) -> None:
    assert direction_violations(scan(_tree(tmp_path, files), None)) == [want]


def test_checker_finds_a_cycle(tmp_path: Path) -> None:
    pkg = _tree(
        tmp_path,
        {
            "__init__.py": "",
            "cli/__init__.py": "from callvault.cli import remote\n",
            "cli/remote.py": "from callvault import cli\n",
            "cli/ok.py": "def f():\n    from callvault.cli import remote\n",
        },
    )
    assert cycles(scan(pkg, None)) == [["callvault.cli", "callvault.cli.remote"]]


def test_checker_type_checking_imports(tmp_path: Path) -> None:
    """A type-only import closes no cycle (it never runs) but still points somewhere."""
    tc = (
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from callvault.vault.a import A\n"
    )
    pkg = _tree(
        tmp_path,
        {
            "__init__.py": "",
            "vault/__init__.py": "",
            "vault/a.py": "from callvault.vault.b import B\n",
            "vault/b.py": tc,
            "store/__init__.py": "",
            "store/c.py": tc,
        },
    )
    imports = scan(pkg, None)
    assert cycles(imports) == []
    assert direction_violations(imports) == [
        "callvault.store.c:3 (store) imports callvault.vault.a (vault)"
    ]


def test_checker_allows_the_layout(tmp_path: Path) -> None:
    pkg = _tree(
        tmp_path,
        {
            "__init__.py": "from callvault.errors import E\n",
            "errors.py": "",
            "integrity/__init__.py": "",
            "integrity/bundle.py": (
                "from callvault.store import records\nfrom callvault import _opus\n"
            ),
            "store/__init__.py": "",
            "store/records.py": "from callvault.errors import E\n",
            "cli/__init__.py": (
                "from callvault.server import app\nfrom callvault.sidecar import x\n"
            ),
            "server/__init__.py": "",
            "server/app.py": "from callvault.vault import Vault\n",
            "sidecar/__init__.py": "from . import x\n",
            "sidecar/x.py": "from callvault.media import wav\n",
            "media/__init__.py": "",
            "media/wav.py": "",
            "vault/__init__.py": "from .core import Vault\n",
            "vault/core.py": "from callvault.integrity import bundle\n",
        },
    )
    imports = scan(pkg, None)
    assert direction_violations(imports) == [] and cycles(imports) == []
