"""The house's plan, checked: data flows one way, no import cycles, small modules, and the torch-free
rooms (spec, store, analysis, report) stay torch-free.

The import graph is read from the source with ``ast``: every ``import`` counts, at module level or
inside a function (a lazy import is still a dependency), except those under ``if TYPE_CHECKING:``.
An import names the most specific module it reaches (``from harness_ext.run import probe`` is the
module ``harness_ext.run.probe`` when that is a module, else the package ``harness_ext.run``).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from conftest import heavy_modules

REPO = Path(__file__).resolve().parent.parent
PKG = REPO / "harness_ext"
MAX_LINES = 420  # "no module over ~400 lines"


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in PKG.rglob("*.py") if "__pycache__" not in p.parts}


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING"
    )


def _imports(path: Path, name: str, lazy: bool = True) -> set[str]:
    """The modules (ours and third-party top-level names) that ``path`` imports; ``lazy=False``:
    only what importing it runs (not the imports inside functions)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if not lazy and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            return
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                mod = f"{base}.{node.module}" if node.module else base
            else:
                mod = node.module or ""
            for a in node.names:
                sub = f"{mod}.{a.name}"
                out.add(sub if sub in MODULES else mod)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return out


GRAPH = {name: _imports(path, name) for name, path in MODULES.items()}
#: what importing each module runs (lazy imports inside functions left out)
EAGER = {name: _imports(path, name, lazy=False) for name, path in MODULES.items()}


def _ours(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    return {m: {d for d in deps if d in MODULES and d != m} for m, deps in graph.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                strong(w)
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
            strong(v)
    return out


def _reach(start: str, graph: dict[str, set[str]]) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        m = todo.pop()
        for d in graph.get(m, ()):
            if d not in seen:
                seen.add(d)
                todo.append(d)
    return seen


def _package_imports(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """Importing a module imports its parent packages' ``__init__`` too: add those edges."""
    full = {m: set(d) for m, d in graph.items()}
    for m, deps in graph.items():
        for d in list(deps):
            parts = d.split(".")
            full[m].update(".".join(parts[:i]) for i in range(1, len(parts)) if ".".join(parts[:i]) in MODULES)
    return full


def test_the_graph_is_read_at_all() -> None:
    assert "harness_ext.run.runner" in GRAPH and "harness_ext.spec" in GRAPH["harness_ext.run.runner"]
    assert "torch" in GRAPH["harness_ext.backend.sampler"]


def test_no_import_cycle_among_harness_ext_modules() -> None:
    """Any loop counts, lazy imports and package ``__init__`` files included (the runner and the
    executors used to import each other; the claims imported their package, which imported them)."""
    assert _cycles(_ours(GRAPH)) == []


def test_a_detected_cycle_is_reported() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c"]]


def test_no_module_is_over_about_400_lines() -> None:
    long = {m: n for m, p in MODULES.items() if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert long == {}


@pytest.mark.parametrize(
    "room", ["harness_ext.spec", "harness_ext.store", "harness_ext.analysis", "harness_ext.report"]
)
def test_torch_free_rooms_reach_neither_torch_nor_the_backend_nor_the_runner(room: str) -> None:
    """Importing a torch-free room loads no torch (a function may import it lazily where it needs it:
    ``resolve_device("auto")``, the store's probe tensors), and nothing in the room reaches the
    backend or the runner, even lazily (data flows spec -> run -> store -> analysis -> report)."""
    rooms = [m for m in MODULES if m == room or m.startswith(room + ".")]
    eager = _package_imports(EAGER)
    loaded = set().union(*(_reach(m, eager) | eager[m] for m in rooms))
    heavy = {"torch", "transformers", "bitsandbytes", "accelerate", "ray", "lm_eval"}
    assert {m for m in loaded if m.split(".")[0] in heavy} == set()
    anywhere = _package_imports(GRAPH)
    reached = set().union(*(_reach(m, anywhere) | anywhere[m] for m in rooms))
    assert {m for m in reached if m.startswith(("harness_ext.backend", "harness_ext.run"))} == set()


def test_rendering_a_report_path_imports_no_torch_at_run_time(fresh_imports) -> None:
    """The static graph, confirmed by the interpreter: importing the reporting side loads no torch."""
    assert heavy_modules(fresh_imports["modules"]["report_imports"]) == set()


def test_the_public_surface_resolves_and_importing_the_package_loads_no_torch(fresh_imports) -> None:
    assert "torch" not in fresh_imports["modules"]["package"], "import harness_ext loaded torch"
    assert fresh_imports["missing"] == []
    names = __import__("harness_ext").__all__
    assert len(names) == len(set(names))
