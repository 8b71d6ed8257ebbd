"""The import ladder of docs/architecture.md, enforced: every import of a circuitbench module goes
to the same or a lower layer, no two modules import each other (directly or around a circle),
imports sit at the top of files, and only the CLI imports the steps."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "circuitbench"

# From the bottom up. A module is placed by its longest matching prefix.
LAYERS: dict[str, int] = {
    "circuitbench": 1,  # the package's face: its version
    "circuitbench.io": 1,
    "circuitbench.metrics": 1,
    "circuitbench.cost": 1,
    "circuitbench.tokenization": 1,
    "circuitbench.options": 1,
    "circuitbench.plan": 1,
    "circuitbench.tasks": 2,
    "circuitbench.graph": 2,
    "circuitbench.patching": 3,
    "circuitbench.models": 4,
    "circuitbench.evaluate": 4,
    "circuitbench.recovery": 4,
    "circuitbench.mib": 4,
    "circuitbench.head_scores": 4,
    "circuitbench.mechanisms": 4,
    "circuitbench.methods": 5,
    "circuitbench.bench": 6,
    "circuitbench.report": 6,
    "circuitbench.steps": 7,
    "circuitbench.cli": 8,
}
# Report builds tables and figures from result files: it runs no model.
REPORT_MAY_NOT_IMPORT = (
    "circuitbench.patching",
    "circuitbench.models",
    "circuitbench.evaluate",
    "circuitbench.methods",
    "circuitbench.bench",
    "circuitbench.steps",
    "circuitbench.cli",
)
# The only imports allowed inside functions: heavy optional work (matplotlib takes ~1.5 s to
# import; it loads only when a figure is drawn).
LAZY_ALLOWED = ("matplotlib",)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer(module: str) -> int:
    best = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len)
    return LAYERS[best]


def imports(path: Path) -> list[tuple[str, int, bool]]:
    """``(imported module, line, at top level)`` of every import in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top = {id(node) for node in tree.body}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
            # "from circuitbench.methods import eap": the submodule is what is imported.
            names += [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            out.append((name, node.lineno, id(node) in top))
    return out


def known_modules() -> set[str]:
    return {module_name(p) for p in PACKAGE.rglob("*.py")}


def internal_imports() -> dict[str, set[str]]:
    modules = known_modules()
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        name = module_name(path)
        graph[name] = {target for target, _, _ in imports(path) if target in modules} - {name}
    return graph


def test_every_module_has_a_layer():
    for module in known_modules():
        assert layer(module) >= 1, module


def test_no_import_runs_up_the_ladder():
    upward = []
    for module, targets in internal_imports().items():
        for target in targets:
            if layer(target) > layer(module):
                upward.append(f"{module} (layer {layer(module)}) -> {target} ({layer(target)})")
    assert not upward, "\n".join(sorted(upward))


def test_report_reads_files_and_runs_no_model():
    offending = [
        f"{module} -> {target}"
        for module, targets in internal_imports().items()
        if module.startswith("circuitbench.report")
        for target in targets
        if target.startswith(REPORT_MAY_NOT_IMPORT)
    ]
    assert not offending, offending


def test_only_the_cli_imports_the_steps():
    offending = [
        f"{module} -> {target}"
        for module, targets in internal_imports().items()
        if not module.startswith(("circuitbench.steps", "circuitbench.cli"))
        for target in targets
        if target.startswith("circuitbench.steps")
    ]
    assert not offending, offending


def test_no_import_circle():
    graph = internal_imports()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        path.append(module)
        for target in sorted(graph.get(module, ())):
            # A package's __init__ importing its own submodules (a registry) is not a circle
            # unless a submodule imports the package back.
            if state.get(target) == 1:
                pytest.fail("import circle: " + " -> ".join(path[path.index(target) :] + [target]))
            if target not in state:
                visit(target)
        path.pop()
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)


def test_imports_sit_at_the_top_of_files():
    lazy = []
    for path in PACKAGE.rglob("*.py"):
        for target, line, at_top in imports(path):
            if not at_top and not target.startswith(LAZY_ALLOWED):
                lazy.append(f"{path.relative_to(SRC)}:{line} imports {target} inside a function")
    assert not lazy, "\n".join(lazy)


def test_the_checker_sees_an_upward_import(tmp_path):
    """The checks can fail: a bottom-layer module that imports the steps is caught."""
    bad = tmp_path / "circuitbench" / "io.py"
    bad.parent.mkdir()
    bad.write_text("import json\n\ndef f():\n    from circuitbench.steps import common\n")
    found = imports(bad)
    assert ("circuitbench.steps", 4, False) in found
    assert layer("circuitbench.steps.common") > layer("circuitbench.io")
