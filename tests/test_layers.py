"""The package's imports point one way, down the layers of ARCHITECTURE.md, and close no circle.

The import graph is read from the source with ``ast`` (every ``import`` statement, at module level or inside a
function, TYPE_CHECKING blocks excluded), so the test needs no import of medlite and cannot be fooled by import
order. Deprecated alias modules (old import paths kept for one release) are left out: they name their new home
as a string.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "medlite"

#: Bottom to top; a module may import only from strictly lower layers, or from its own top-level package.
LAYERS: list[tuple[str, ...]] = [
    ("errors", "_version"),
    ("utils",),
    ("data", "losses"),
    ("models",),
    ("config",),
    ("metrics", "rundir"),
    ("paradigms", "explain", "deploy"),
    ("workflows",),
    ("api",),
    ("serve",),
    ("cli",),
    ("__main__",),  # python -m medlite: the command line as a module (torchrun -m medlite ...)
]
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}
#: Old module paths kept as deprecated aliases (see medlite.utils.deprecation); they import nothing themselves.
DEPRECATED = {"medlite.training", "medlite.utils.rundir", "medlite.models.adapt", "medlite.paradigms.base",
              "medlite.explain.api", "medlite.explain.base", "medlite.explain.evaluate",
              "medlite.explain.faithfulness", "medlite.explain.road", "medlite.explain.localisation"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for n in ast.walk(node))
    return skip


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """medlite modules imported by ``name`` (``from pkg import submodule`` resolves to the submodule)."""
    tree = ast.parse(path.read_text())
    skip = _type_checking_nodes(tree)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "medlite")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "medlite":
                continue
            subs = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in modules]
            found.update(subs or [target])
    return found - {name}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items() if name not in DEPRECATED}


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "api"  # the root package is the public facade over medlite.api


def test_every_top_level_module_has_a_layer():
    missing = sorted({_layer(m) for m in _modules() if m not in DEPRECATED} - set(RANK))
    assert not missing, f"modules without a layer in LAYERS: {missing}"


def test_imports_point_down_the_layers():
    upward = []
    for module, targets in _graph().items():
        for target in targets:
            if target in DEPRECATED:
                upward.append(f"{module} -> {target} (a deprecated alias)")
                continue
            here, there = _layer(module), _layer(target)
            if here != there and RANK[there] >= RANK[here]:
                upward.append(f"{module} ({here}) -> {target} ({there})")
    assert not upward, "imports that do not point down the layers:\n" + "\n".join(sorted(upward))


def test_no_import_circle():
    graph = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in graph:
                continue
            if state.get(nxt) == 1:
                cycles.append(" -> ".join([*stack[stack.index(nxt):], nxt]))
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert not cycles, "import circles:\n" + "\n".join(cycles)


def test_the_checker_sees_an_upward_import(tmp_path, monkeypatch):
    """The test above can fail: a metrics module importing a workflow is reported."""
    modules = {"medlite.metrics.x": tmp_path / "x.py", "medlite.workflows.train": tmp_path / "t.py"}
    (tmp_path / "x.py").write_text("from medlite.workflows.train import train\n")
    targets = _imports("medlite.metrics.x", tmp_path / "x.py", modules)
    assert targets == {"medlite.workflows.train"}
    assert RANK[_layer("medlite.workflows.train")] > RANK[_layer("medlite.metrics.x")]


@pytest.mark.parametrize("statement", ["import medlite", "import medlite.cli", "from medlite import api"])
def test_importing_medlite_imports_neither_torch_nor_lightning(statement):
    code = (f"import sys; {statement}; "
            "bad = [m for m in ('torch', 'lightning', 'torchmetrics') if m in sys.modules]; print(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"{statement!r} imported {out}"
