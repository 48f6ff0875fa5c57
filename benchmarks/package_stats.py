"""The package's shape, for before/after comparisons of a refactor: modules, lines, the longest
functions (lines and statements), import cycles among modules and imports that run up the layer list of
``tests/test_layers.py`` (read with ``ast``; lazy imports count, ``TYPE_CHECKING`` ones do not).

    python benchmarks/package_stats.py [PACKAGE_DIR]     # default: hf_projcomp beside this folder
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path


def modules(package: Path) -> dict[str, Path]:
    return {
        ".".join(path.relative_to(package.parent).with_suffix("").parts).removesuffix(".__init__"): path
        for path in sorted(package.rglob("*.py"))
    }


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Modules of the package ``name`` imports (relative ones resolved), TYPE_CHECKING blocks aside."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    skip = {
        id(node)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
        for child in block.body
        for node in ast.walk(child)
    }
    out = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            root = f"{base}.{node.module}" if node.level and node.module else (base if node.level else node.module)
            targets = [root] + [f"{root}.{alias.name}" for alias in node.names]
        else:
            continue
        out.update(t for t in targets if t in known and t != name)
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for dep in graph[node]:
            if dep not in index:
                visit(dep)
                low[node] = min(low[node], low[dep])
            elif dep in stack:
                low[node] = min(low[node], index[dep])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def functions(path: Path) -> list[tuple[int, int, str]]:
    """(lines, statements, qualified name) of every function in ``path``."""
    tree = ast.parse(path.read_text())
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            statements = sum(isinstance(n, ast.stmt) for n in ast.walk(node)) - 1
            out.append((node.end_lineno - node.lineno + 1, statements, f"{path.name}:{node.name}"))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("package", nargs="?", type=Path, default=Path(__file__).parent.parent / "hf_projcomp")
    package = parser.parse_args().package.resolve()
    found = modules(package)
    graph = {name: imports(name, path, set(found)) for name, path in found.items()}
    lines = sum(len(path.read_text().splitlines()) for path in found.values())
    funcs = sorted((f for path in found.values() for f in functions(path)), reverse=True)
    longest = max(len(path.read_text().splitlines()) for path in found.values())
    print(f"modules: {len(found)}, lines: {lines}, longest module: {longest} lines")
    print("longest functions (lines, statements): " + ", ".join(f"{n} {ln}/{st}" for ln, st, n in funcs[:8]))
    by_statements = sorted(funcs, key=lambda f: f[1], reverse=True)
    print("most statements: " + ", ".join(f"{n} {st}" for _, st, n in by_statements[:5]))
    found_cycles = cycles(graph)
    print(f"import cycles: {len(found_cycles)}" + "".join(f"\n  {' <-> '.join(c)}" for c in found_cycles))


if __name__ == "__main__":
    sys.setrecursionlimit(10_000)
    main()
