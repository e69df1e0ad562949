"""The autolog package's import graph: no cycles, and no module importing another's private names.

Read from the source (module-level and function-level imports; ``if TYPE_CHECKING:`` blocks are left out,
they never run), so a lazy ``from cairn.autolog import pytorch as core`` inside a function counts too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import cairn.autolog

ROOT = Path(cairn.autolog.__file__).parent
PACKAGE = "cairn.autolog"
PLAIN_TORCH = ("cairn.autolog.torch", "cairn.autolog.pytorch")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node except those under ``if TYPE_CHECKING:``."""
    found: list[ast.AST] = []
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            stack.extend(node.orelse)
            continue
        found.append(node)
        stack.extend(ast.iter_child_nodes(node))
    return found


def _imports(path: Path, modules: set[str]) -> list[tuple[str, list[str]]]:
    """(imported module, names taken from it) for each import of a module of the package."""
    edges = []
    for node in _runtime_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            edges += [(alias.name, []) for alias in node.names if alias.name in modules]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                if submodule in modules:
                    edges.append((submodule, []))
                elif node.module in modules:
                    edges.append((node.module, [alias.name]))
    return edges


def _graph() -> dict[str, list[tuple[str, list[str]]]]:
    paths = {_module_name(path): path for path in ROOT.rglob("*.py")}
    return {name: _imports(path, set(paths)) for name, path in paths.items()}


def _cycles(graph: dict[str, list[tuple[str, list[str]]]], within: tuple[str, ...]) -> list[list[str]]:
    """Import cycles through modules whose names start with one of ``within``."""
    nodes = {name for name in graph if name.startswith(within)}
    edges = {name: {target for target, _ in graph[name] if target in nodes} for name in nodes}
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the stack, 2: done

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for target in sorted(edges[node]):
            if state.get(target) == 1:
                cycles.append([*stack[stack.index(target) :], target])
            elif target not in state:
                visit(target, [*stack, target])
        state[node] = 2

    for node in sorted(nodes):
        if node not in state:
            visit(node, [node])
    return cycles


def test_the_graph_is_read_from_the_source() -> None:
    graph = _graph()
    integration = dict(graph["cairn.autolog.torch.integration"])
    assert "cairn.autolog.torch.hooks" in integration and "cairn.autolog.torch.session" in integration
    assert "cairn.autolog.torch" in {m.rsplit(".", 1)[0] for m in graph}


def test_plain_pytorch_autolog_has_no_import_cycle() -> None:
    assert _cycles(_graph(), PLAIN_TORCH) == []


def test_the_autolog_package_has_no_import_cycle() -> None:
    assert _cycles(_graph(), (PACKAGE,)) == []


def test_no_plain_pytorch_module_imports_another_modules_private_names() -> None:
    private = [
        f"{importer} imports {name} from {target}"
        for importer, edges in _graph().items()
        if importer.startswith(PLAIN_TORCH)
        for target, names in edges
        for name in names
        if name.startswith("_") and target != importer
    ]
    assert private == []
