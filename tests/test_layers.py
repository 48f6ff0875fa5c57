"""The package's imports point down a short list of layers and never form a cycle (read with ``ast``).

Every ``import``/``from ... import`` counts, at module level or inside a function (a lazy import is
still a dependency), and importing ``hf_projcomp.a.b`` depends on the package ``hf_projcomp.a`` too;
``if TYPE_CHECKING:`` blocks do not count. Imports by name at run time (``importlib.import_module``)
are the package's two deliberate ways up: the lazy public names of ``hf_projcomp/__init__.py`` and
the PEFT registration hook (``_peft_hook.py``), both leaves otherwise.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "hf_projcomp"

# Bottom to top: a module may import from its own layer and the layers below it.
LAYERS = [
    # leaves: no import of the package
    {"_version", "io", "ranks", "model_ids", "texts", "blocks", "peft_integration", "_peft_hook", "data"},
    {"architectures"},  # the family table
    {"plan", "sizing", "target", "hard_pruning", "vocab", "importance", "evaluate", "config"},
    {"compact", "selection", "export", "demo"},  # pruning, selections, saving vanilla checkpoints
    {"projection", "mapping", "loading"},  # the projected model, PEFT's entry point, model loading
    {"training", "distributed"},  # trainers, FSDP2
    {"cli"},
]
LAYER = {name: level for level, names in enumerate(LAYERS) for name in names}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def _type_checking_block(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")
    )


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    found: list[ast.Import | ast.ImportFrom] = []
    stack = [tree]
    while stack:
        node = stack.pop()
        if _type_checking_block(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        stack.extend(ast.iter_child_nodes(node))
    return found


def _targets(module: str, node: ast.Import | ast.ImportFrom) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
    for _ in range(node.level - 1 if node.level else 0):
        package = package.rpartition(".")[0]
    base = (package + "." + node.module if node.module else package) if node.level else node.module or ""
    return [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]


def dependencies(module: str) -> set[str]:
    """The package's modules ``module`` imports, with the packages they are in (the root only where a
    name is imported from it, as every import runs it)."""
    out = set()
    for node in _imports(ast.parse(MODULES[module].read_text(encoding="utf-8"))):
        for target in _targets(module, node):
            while target and target not in MODULES:  # an attribute of a module: the module
                target = target.rpartition(".")[0]
            if target == "hf_projcomp" and module != target:  # a public name of the package itself
                out.add(target)
            while target.count(".") >= 1:  # the module and every package above it, below the root
                if target != module and not module.startswith(target + "."):
                    out.add(target)
                target = target.rpartition(".")[0]
    return out


GRAPH = {module: dependencies(module) for module in MODULES}


def layer_of(module: str) -> int:
    if module == "hf_projcomp":  # the lazy public names: the top
        return len(LAYERS)
    top = module.split(".")[1]
    assert top in LAYER, f"{module} is in no layer: add it to LAYERS"
    return LAYER[top]


def test_every_module_is_in_a_layer():
    for module in MODULES:
        if module != "hf_projcomp":
            layer_of(module)


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m != "hf_projcomp"))
def test_imports_point_down(module):
    upward = sorted(d for d in GRAPH[module] if layer_of(d) > layer_of(module))
    assert not upward, f"{module} (layer {layer_of(module)}) imports from higher layers: {upward}"


def test_no_import_cycle():
    visiting, done, path = set(), set(), []

    def visit(module: str) -> None:
        visiting.add(module)
        path.append(module)
        for dep in sorted(GRAPH[module]):
            assert dep not in visiting, "import cycle: " + " -> ".join([*path[path.index(dep) :], dep])
            if dep not in done:
                visit(dep)
        visiting.discard(module)
        path.pop()
        done.add(module)

    for module in sorted(MODULES):
        if module not in done:
            visit(module)
