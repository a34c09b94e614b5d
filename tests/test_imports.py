"""No import circles in common/: every module's ``common.*`` imports, at the top or inside a
function, form a DAG, so any module imports on its own and reads without knowing who
imports it (a function-local import is no way around a circle)."""
import ast
from pathlib import Path

from common.paths import REPO_ROOT


def _module(path: Path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set) -> set:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                 else [node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name:
                out.add(name)
    return out


def test_common_has_no_import_cycles():
    files = sorted((REPO_ROOT / "common").rglob("*.py"))
    modules = {_module(f) for f in files}
    graph = {_module(f): _imports(f, modules) - {_module(f)} for f in files}
    done, stack = set(), []

    def visit(node):
        if node in stack:
            raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(node):] + [node]))
        if node in done:
            return
        stack.append(node)
        for dep in sorted(graph[node]):
            if dep != "common":  # the package's own __init__ imports nothing of its modules
                visit(dep)
        stack.pop()
        done.add(node)

    for node in sorted(graph):
        visit(node)
    assert len(done) == len(graph) > 50
