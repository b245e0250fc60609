"""The package's shape: no import cycles (function-level imports included), the library never imports the app."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import metajax

SRC = Path(metajax.__file__).resolve().parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(name: str, path: Path) -> set[str]:
    """The metajax modules ``name`` imports anywhere (functions included), less ``if TYPE_CHECKING:`` blocks."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # a relative import
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            for alias in node.names:
                # ``from pkg import sub`` imports the module pkg.sub; ``from pkg import name`` runs pkg itself.
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return {m for m in found if m in MODULES and m != name}


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Import cycles of ``graph`` found by a depth-first search, each as a path back to its start."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    cycles = []

    def walk(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt) :] + [nxt])
            elif nxt not in state:
                walk(nxt, [*path, nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            walk(name, [name])
    return cycles


def test_no_import_cycles():
    cycles = find_cycles(GRAPH)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_checker_sees_function_level_imports_and_planted_cycles():
    # app.cli imports the models inside _network, a function: the graph must hold that edge.
    assert "metajax.models" in GRAPH["metajax.app.cli"]
    planted = {name: set(deps) for name, deps in GRAPH.items()}
    planted["metajax.tasks.base"].add("metajax.training")  # training imports tasks.base
    assert ["metajax.tasks.base", "metajax.training", "metajax.tasks.base"] in find_cycles(planted)


def test_library_never_imports_the_application():
    offenders = {
        name: sorted(m for m in deps if m == "metajax.app" or m.startswith("metajax.app."))
        for name, deps in GRAPH.items()
        if not (name == "metajax.app" or name.startswith("metajax.app."))
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_import_metajax_gives_the_readme_modules_without_the_application():
    code = (
        "import sys, metajax\n"
        "assert 'metajax.app' not in sys.modules\n"
        "print(metajax.checkpoint.Checkpointer.__name__, metajax.continual.OML.__name__,"
        " metajax.plots.plot_run.__name__)\n"
        "assert 'metajax.app' not in sys.modules\n"
        "assert 'equinox' not in sys.modules  # an optional extra: metajax imports without it\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["Checkpointer", "OML", "plot_run"]
