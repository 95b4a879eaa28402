"""The package's layers: every import of an ``esapr`` module points down the table below (never
up, never in a circle), so each layer can be read, tested and replaced without the ones above.
Imports are read from the source (also those inside functions). A family names its model and
batch builder by path ("module:Class", loaded when a run is built): that is the registry the layers
above read, not an import of the family's."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "esapr"
# from the ground up; a module may import its own layer's modules and any layer below
LAYERS = [
    ("ground", ["errors", "files", "progress"]),
    ("options", ["options", "metrics"]),
    ("families", ["families"]),
    ("config", ["config", "templates"]),
    ("data", ["data"]),
    ("models", ["models"]),
    ("storage", ["experiment"]),
    ("training", ["training"]),
    ("analysis", ["figures", "comparison", "results", "tuning"]),
    ("apps", ["recommend", "colab"]),
    ("face", ["cli", "commands", "__init__", "__main__"]),
]
LEVEL = {name: level for level, (_, names) in enumerate(LAYERS) for name in names}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def level(module: str) -> int:
    """The layer of ``esapr.x.y``: its top-level part's (``esapr`` itself is the face)."""
    top = module.split(".")[1] if "." in module else "__init__"
    return LEVEL[top]


def imports() -> dict[str, set[str]]:
    """Each esapr module -> the esapr modules it imports (a name imported from a package counts as
    the submodule where one exists)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names if alias.name.startswith("esapr")}
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("esapr"):
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    targets.add(sub if sub in modules else node.module)
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def upward_imports(graph) -> list[tuple[str, str]]:
    return sorted((a, b) for a, targets in graph.items() for b in targets if level(b) > level(a))


def circles(graph) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan)."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(node):
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on.add(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_every_module_has_a_layer():
    assert all(level(name) >= 0 for name in imports())


def test_no_import_runs_back_up():
    assert upward_imports(imports()) == []


def test_no_circle_of_modules():
    assert circles(imports()) == []


def test_only_the_face_knows_the_command_line():
    graph = imports()
    users = {a for a, targets in graph.items() if "esapr.cli" in targets}
    assert users <= {"esapr.commands", "esapr.__main__"}
