"""Every import arrow in fwdproxy/ and addons/ points down: no module imports, directly or through others, a
module that imports it back. Imports inside functions and under TYPE_CHECKING count as arrows too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent.parent
PACKAGES = {"fwdproxy": "fwdproxy", "fwdproxy_addons": "addons"}
"""Package name -> its folder (pyproject maps addons/ to fwdproxy_addons)."""


def modules(root: Path = REPO) -> dict[str, Path]:
    """Dotted module name -> file, for every module of PACKAGES (a package is its __init__.py)."""
    found: dict[str, Path] = {}
    for package, folder in PACKAGES.items():
        for path in (root / folder).rglob("*.py"):
            parts = [package, *path.relative_to(root / folder).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def imported(name: str, path: Path, known: set[str]) -> set[str]:
    """The modules of ``known`` that ``name`` imports anywhere in its file (module level or in functions)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # `from a.b import c` imports the module a.b.c when there is one, else a name of a.b.
            targets += [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names
            ]
    found: set[str] = set()
    for target in targets:
        while target and target not in known:
            target = target.rpartition(".")[0]
        if target and target != name:
            found.add(target)
    return found


def graph(root: Path = REPO) -> dict[str, set[str]]:
    mods = modules(root)
    return {name: imported(name, path, set(mods)) for name, path in mods.items()}


def cycles(arrows: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan), each sorted; empty for a layered graph."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(arrows.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(arrows):
        if v not in index:
            visit(v)
    return groups


def test_the_cycle_finder_finds_a_circle_through_three_modules() -> None:
    arrows = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"a"}}
    assert cycles(arrows) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_function_level_and_relative_imports_are_arrows(tmp_path: Path) -> None:
    pkg = tmp_path / "fwdproxy"
    (pkg / "store").mkdir(parents=True)
    (tmp_path / "addons").mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "store" / "__init__.py").write_text("")
    (pkg / "store" / "a.py").write_text("def f():\n    from fwdproxy.store import b\n")
    (pkg / "store" / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import a\n"
    )
    arrows = graph(tmp_path)
    assert arrows["fwdproxy.store.a"] == {"fwdproxy.store.b"}
    assert arrows["fwdproxy.store.b"] == {"fwdproxy.store.a"}
    assert cycles(arrows) == [["fwdproxy.store.a", "fwdproxy.store.b"]]


def test_no_import_circles_in_fwdproxy_and_addons() -> None:
    arrows = graph()
    assert {"fwdproxy.store.disk", "fwdproxy_addons.fwdproxy", "fwdproxy_addons._mitm.http1"} <= set(
        arrows
    )  # both packages read
    assert cycles(arrows) == []


@pytest.mark.parametrize(
    "importer, forbidden",
    [
        ("fwdproxy.config", "fwdproxy.workers"),  # config knows nothing of workers
        ("fwdproxy.engine", "fwdproxy.workers"),  # cli chooses between supervising and serving
        ("fwdproxy.envcmd", "fwdproxy.cli"),
        ("fwdproxy.workers", "fwdproxy.cli"),
    ],
)
def test_shell_arrows(importer: str, forbidden: str) -> None:
    assert forbidden not in graph()[importer]


def test_only_the_shell_reaches_into_addons() -> None:
    arrows = graph()
    reaching = {
        m
        for m, targets in arrows.items()
        if m.startswith("fwdproxy.") and any(t.startswith("fwdproxy_addons") for t in targets)
    }
    assert reaching == {"fwdproxy.engine"}
