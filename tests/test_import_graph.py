"""The package's module import graph has no cycle, and every module imports on its own."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import pytest_gradhealth

PACKAGE = Path(pytest_gradhealth.__file__).parent


def module_name(path: Path) -> str:
    parts = ("pytest_gradhealth", *path.relative_to(PACKAGE).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def run_time_nodes(tree: ast.AST):
    """Every node of the tree except those under `if TYPE_CHECKING:`, which never run."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            yield from (n for child in node.orelse for n in [child, *run_time_nodes(child)])
            continue
        yield node
        yield from run_time_nodes(node)


def imported(name: str) -> set[str]:
    """The package's modules that `name` imports when it runs: at the top and inside functions (lazy imports)."""
    found = set()
    package = name if MODULES[name].name == "__init__.py" else name.rpartition(".")[0]
    for node in run_time_nodes(ast.parse(MODULES[name].read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*package.split(".")[: len(package.split(".")) - node.level + 1], base]).strip(".")
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {target for target in targets if target in MODULES and target != name}
    return found


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph, as the path that closes it, or None."""
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return [*path[path.index(nxt) :], nxt] if nxt in path else [node, nxt]
            if nxt not in state:
                found = visit(nxt, [*path, nxt])
                if found:
                    return found
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node, [node])
            if found:
                return found
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": set()}) is None


def test_the_graph_is_read_from_the_source():
    assert "pytest_gradhealth.engine.taps.fused" in imported("pytest_gradhealth.engine.kinds")
    assert "pytest_gradhealth.engine.aten" in imported("pytest_gradhealth.engine.taps.fused")
    assert "pytest_gradhealth" in imported("pytest_gradhealth.engine.probe")  # inside a function
    assert "pytest_gradhealth.probing" not in imported("pytest_gradhealth")  # only under TYPE_CHECKING


def test_no_module_of_the_package_imports_itself_back():
    graph = {name: imported(name) for name in MODULES}
    assert cycle(graph) is None


@pytest.mark.parametrize("name", [n for n in MODULES if n != "pytest_gradhealth.__main__"])
def test_every_module_imports(name):
    importlib.import_module(name)
