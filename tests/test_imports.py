"""Import rules of the package, read from the source with ast (nothing is imported, so it is fast).

Every module of progtune/, analysis/ (progtune.analysis) and search_spaces/
(progtune.search_spaces) is parsed; every import statement counts, wherever it is: at module
level, inside functions and under `if TYPE_CHECKING:`. Dynamic imports (importlib with a computed
name) are not seen. The rules (design.md, issue 10):

- no import cycle among the package's modules;
- the training loop (progtune.train and every package module it imports, transitively) imports
  no ray, optuna, pandas or argparse, so it runs and tests without them;
- analysis imports no torch or ray, neither itself nor through what its imports load;
- config.py and results.py import nothing upward: only stdlib / third-party, each other, the
  pieces they were split into (config_*, results_*) and the leaf modules errors and atomic.
"""

from __future__ import annotations

import ast
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"progtune": "progtune", "analysis": "progtune.analysis"}
FOLDERS["search_spaces"] = "progtune.search_spaces"


@dataclass(frozen=True)
class Import:
    target: str  # absolute dotted name: a package module, or a third-party / stdlib module
    line: int
    at_load: bool  # runs when the module is imported: module level, not under TYPE_CHECKING


@cache
def modules() -> dict[str, Path]:
    """Dotted module name -> source file (a package's __init__.py under the package's name)."""
    out = {}
    for folder, package in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = [*package.split("."), *path.relative_to(ROOT / folder).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _package_module(name: str, known: Iterable[str]) -> str:
    """The longest known package module that `name` is or lies in (`name` itself if none)."""
    known = set(known)
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in known:
            return ".".join(parts[:n])
    return name


def read_imports(source: str, name: str, is_package: bool, known: Iterable[str]) -> list[Import]:
    """Every import statement of one module's source, resolved to absolute names."""
    known = set(known)
    package = name.split(".") if is_package else name.split(".")[:-1]
    out: list[Import] = []

    def targets(node: ast.Import | ast.ImportFrom) -> list[str]:
        if isinstance(node, ast.Import):
            return [_package_module(a.name, known) for a in node.names]
        base = package[: len(package) - node.level + 1] if node.level else []
        module = ".".join([*base, *([node.module] if node.module else [])])
        # `from pkg import mod` imports the module pkg.mod; `from mod import name` imports mod.
        return [
            f"{module}.{a.name}"
            if f"{module}.{a.name}" in known
            else _package_module(module, known)
            for a in node.names
        ]

    def visit(node: ast.AST, at_load: bool) -> None:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            out.extend(Import(t, node.lineno, at_load) for t in dict.fromkeys(targets(node)))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            at_load = False
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                visit(child, False)
            for child in node.orelse:
                visit(child, at_load)
            return
        for child in ast.iter_child_nodes(node):
            visit(child, at_load)

    visit(ast.parse(source), True)
    return out


@cache
def imports_of(name: str) -> tuple[Import, ...]:
    path = modules()[name]
    return tuple(read_imports(path.read_text(), name, path.name == "__init__.py", modules()))


def _package_edges(name: str, load_only: bool = False) -> list[Import]:
    return [
        i
        for i in imports_of(name)
        if i.target in modules() and i.target != name and (i.at_load or not load_only)
    ]


def _top(target: str) -> str:
    return target.split(".")[0]


def _closure(starts: Iterable[str], follow: Callable[[str], list[Import]]) -> dict[str, list[str]]:
    """Package modules reachable from `starts` -> the import chain that reaches each."""
    chains = {s: [s] for s in starts}
    todo = deque(chains)
    while todo:
        name = todo.popleft()
        for imp in follow(name):
            if imp.target not in chains:
                chains[imp.target] = [*chains[name], imp.target]
                todo.append(imp.target)
    return chains


def _cycles() -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in {i.target for i in _package_edges(v)}:
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(modules()):
        if v not in index:
            connect(v)
    return found


def _shown(name: str, imp: Import, chain: list[str]) -> str:
    where = "" if imp.at_load else " (inside a function or under TYPE_CHECKING)"
    return f"{name}:{imp.line} imports {imp.target}{where}; reached by {' -> '.join(chain)}"


# ---------------------------------------------------------------------------- the rules
def test_the_reader_sees_every_kind_of_import():
    source = (
        "from __future__ import annotations\n"
        "import os.path\n"
        "from typing import TYPE_CHECKING\n"
        "from . import sibling\n"
        "from .sibling import thing\n"
        "from .. import config\n"
        "if TYPE_CHECKING:\n"
        "    import pandas as pd\n"
        "else:\n"
        "    import json\n"
        "class K:\n"
        "    import math\n"
        "def f():\n"
        "    import ray.tune\n"
        "    from progtune.results import read_trials\n"
    )
    known = {"progtune", "progtune.config", "progtune.results", "progtune.analysis"}
    known.add("progtune.analysis.sibling")
    got = read_imports(source, "progtune.analysis.report", False, known)
    assert [(i.target, i.line, i.at_load) for i in got] == [
        ("__future__", 1, True),
        ("os.path", 2, True),
        ("typing", 3, True),
        ("progtune.analysis.sibling", 4, True),
        ("progtune.analysis.sibling", 5, True),
        ("progtune.config", 6, True),
        ("pandas", 8, False),
        ("json", 10, True),
        ("math", 12, True),
        ("ray.tune", 14, False),
        ("progtune.results", 15, False),
    ]
    # The package itself was read: the modules named in design.md are there, with their imports.
    assert {"progtune.train", "progtune.config", "progtune.results"} <= set(modules())
    assert {"progtune.analysis.report", "progtune.search_spaces.smoke"} <= set(modules())
    assert "progtune.config" in {i.target for i in imports_of("progtune.results")}


def test_no_import_cycle_in_the_package():
    shown = []
    for component in _cycles():
        edges = [
            f"{name}:{i.line} -> {i.target}"
            for name in component
            for i in _package_edges(name)
            if i.target in component
        ]
        shown.append(f"cycle among {', '.join(component)}: {'; '.join(edges)}")
    assert not shown, "\n".join(shown)


def test_training_loop_imports_no_ray_optuna_pandas_or_argparse():
    forbidden = {"ray", "optuna", "pandas", "argparse"}
    chains = _closure(["progtune.train"], _package_edges)
    bad = [
        _shown(name, imp, chain)
        for name, chain in chains.items()
        for imp in imports_of(name)
        if _top(imp.target) in forbidden
    ]
    assert not bad, "\n".join(bad)


def test_analysis_imports_no_torch_or_ray():
    """analysis' own imports anywhere, and what loading those package modules loads in turn."""
    forbidden = {"torch", "ray"}
    own = [n for n in modules() if n.startswith("progtune.analysis")]

    def follow(name: str) -> list[Import]:
        return _package_edges(name, load_only=not name.startswith("progtune.analysis"))

    bad = [
        _shown(name, imp, chain)
        for name, chain in _closure(own, follow).items()
        for imp in imports_of(name)
        if _top(imp.target) in forbidden and (imp.at_load or name in own)
    ]
    assert not bad, "\n".join(bad)


def test_config_and_results_import_nothing_upward():
    low = ("progtune.config", "progtune.results", "progtune.errors", "progtune.atomic")

    def allowed(name: str) -> bool:
        return name in low or name.startswith(("progtune.config_", "progtune.results_"))

    chains = _closure(["progtune.config", "progtune.results"], _package_edges)
    bad = [" -> ".join(chain) for name, chain in chains.items() if not allowed(name)]
    assert not bad, "upward imports:\n" + "\n".join(bad)
