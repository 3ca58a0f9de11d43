"""The package's layers: imports flow one way, so a newcomer can read it from the ground floor up.

Every import of ``src/freestems`` is counted, those inside functions and the type-only ones too (a circle
that only type checkers or lazy imports walk is still a circle to a reader). ``from a import b`` counts as an
import of the module ``a.b`` when there is one, else of ``a``; a parent package's ``__init__`` is not counted
as imported by its children (Python runs it first, but it imports nothing eagerly that points back).
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted((SRC / "freestems").rglob("*.py"))}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The freestems modules that ``name`` (at ``path``) imports, anywhere in its body."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    return {module for module in found if module in known and module != name}


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, set(modules)) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def _core(module: str) -> bool:
    return module.startswith("freestems.models") or module in ("freestems.engine", "freestems.contract")


def test_no_import_cycle_runs_through_the_models_or_the_engine():
    tangled = [component for component in cycles(import_graph()) if any(map(_core, component))]
    assert tangled == []


def test_no_import_cycle_anywhere():
    """No two modules of the package import each other, even by a path through others."""
    assert cycles(import_graph()) == []


def test_the_cycle_finder_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_an_import_inside_a_function_counts(tmp_path):
    source = "def f():\n    from freestems.engine import separate\n"
    path = tmp_path / "x.py"
    path.write_text(source)
    assert _imports("freestems.x", path, {"freestems.engine", "freestems.x"}) == {"freestems.engine"}


def test_the_contract_is_the_ground_floor():
    assert import_graph()["freestems.contract"] == set()


def test_the_engine_imports_only_what_lies_below_it():
    below = {"freestems.contract", "freestems.rules", "freestems.runtime"}
    assert import_graph()["freestems.engine"] <= below


def test_the_download_code_does_not_import_the_loader():
    assert "freestems.models.loading" not in import_graph()["freestems.models.download"]
