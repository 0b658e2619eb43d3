"""The package's layering (DESIGN.md, "Layout"), read from the source: no import circle, and no
import that runs against the layers.

    leaves   errors, _atomic, _extension, _lazy, _logging, _version: import nothing of phasenets (any layer
             may use them)
    models/  torch only (+ the leaves)
    data/    torch and DALI (+ the leaves); DALI nowhere else
    cache/   the native extension and torch (+ the leaves)
    train/   models, data, cache (config.py belongs to this layer: it takes its choice lists from
             the modules that implement them, some of which live in train/)
    tools    export, viz: train and everything below it
    cli      parses arguments and calls the API (it may import anything)

Imports under ``if TYPE_CHECKING:`` are annotations, not dependencies, and are left out; imports
inside functions count (a lazy import still ties two modules together).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "phasenets"

LEAVES = {"phasenets.errors", "phasenets._atomic", "phasenets._extension", "phasenets._lazy", "phasenets._logging",
          "phasenets._version"}
LAYERS = {  # layer -> the layers it may import (besides itself and the leaves)
    "leaf": set(),
    "models": set(),
    "data": set(),
    "cache": set(),
    "train": {"models", "data", "cache"},
    "tools": {"train", "models", "data", "cache"},
    "cli": {"api", "tools", "train", "models", "data", "cache"},
    "api": {"tools", "train", "models", "data", "cache", "cli"},
}
THIRD_PARTY = {  # layer -> the third-party top-level packages it may import (the standard library is free)
    "leaf": {"torch"},
    "models": {"torch", "safetensors"},
    "data": {"torch", "numpy", "PIL", "nvidia", "tqdm", "yaml", "sklearn"},
    "cache": {"torch", "numpy", "tqdm", "psutil"},
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(path): path for path in PACKAGE.rglob("*.py")}


def layer_of(module: str) -> str:
    if module in LEAVES:
        return "leaf"
    if module == "phasenets":
        return "api"
    if module in ("phasenets.cli", "phasenets.__main__"):
        return "cli"
    if module in ("phasenets.export", "phasenets.viz"):
        return "tools"
    if module == "phasenets.config":
        return "train"
    return module.split(".")[1]


def _type_checking_lines(tree: ast.Module) -> set[int]:
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, child.end_lineno + 1))
    return lines


def imports_of(module: str) -> tuple[set[str], set[str]]:
    """(phasenets modules, third-party top-level packages) that ``module`` imports at run time."""
    path = MODULES[module]
    tree = ast.parse(path.read_text())
    skipped = _type_checking_lines(tree)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    internal, external = set(), set()
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skipped:
            continue
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # `from package import submodule` depends on the submodule
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]
        else:
            continue
        for name in names:
            if name == "phasenets" or name.startswith("phasenets."):
                while name not in MODULES:  # an attribute path: its module
                    name = name.rpartition(".")[0]
                if name != module:
                    internal.add(name)
            elif name.split(".")[0] not in _STDLIB:
                external.add(name.split(".")[0])
    return internal, external


_STDLIB = set(__import__("sys").stdlib_module_names) | {"__future__"}
GRAPH = {module: imports_of(module)[0] for module in MODULES}


def test_there_is_no_import_circle():
    index, low, stack, on_stack, circles = {}, {}, [], set(), []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in GRAPH[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for module in sorted(GRAPH):
        if module not in index:
            visit(module)
    assert circles == []


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_follow_the_layers(module):
    layer = layer_of(module)
    allowed = LAYERS[layer] | {layer, "leaf"}
    internal, external = imports_of(module)
    wrong = sorted(target for target in internal if layer_of(target) not in allowed)
    assert wrong == [], f"{module} ({layer}) imports {wrong}, which its layer may not"
    if layer in THIRD_PARTY:
        foreign = sorted(external - THIRD_PARTY[layer])
        assert foreign == [], f"{module} ({layer}) imports {foreign}"


def test_dali_is_imported_only_by_the_data_layer():
    users = sorted(module for module in MODULES if "nvidia" in imports_of(module)[1])
    assert users and all(layer_of(module) == "data" for module in users), users


def test_the_layering_check_sees_a_violation():
    """The rule is not vacuous: a models/ module importing train/ would be caught."""
    assert layer_of("phasenets.train.loop") not in LAYERS["models"] | {"models", "leaf"}
    assert "phasenets.cache.feature_cache" in GRAPH["phasenets.cache.levels"]
    assert "phasenets.cache.ops" in GRAPH["phasenets.cache.feature_cache"]  # `from package import submodule`
