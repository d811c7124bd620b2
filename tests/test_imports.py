"""The package's modules import each other without cycles (function-level imports included)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "sctranslator"


def module_names() -> dict[str, Path]:
    """Dotted name -> file, for every module of the package (a package is its __init__.py)."""
    names = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def lazy_exports(tree: ast.Module) -> dict[str, str]:
    """A package __init__'s lazy re-export table (`_EXPORTS = {name: module}` passed to lazy_getattr)."""
    uses_lazy = any(isinstance(node, ast.Name) and node.id == "lazy_getattr" for node in ast.walk(tree))
    for node in tree.body:
        if (uses_lazy and isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict)
                and any(isinstance(t, ast.Name) and t.id == "_EXPORTS" for t in node.targets)):
            return {key.value: value.value for key, value in zip(node.value.keys, node.value.values, strict=True)
                    if isinstance(key, ast.Constant) and isinstance(value, ast.Constant)}
    return {}


class Imports(ast.NodeVisitor):
    """Every runtime import statement in a module, at any depth; `if TYPE_CHECKING:` bodies skipped."""

    def __init__(self, module: str, is_package: bool):
        self.package = module if is_package else module.rpartition(".")[0]
        self.found: list[tuple[str, str | None]] = []  # (module, imported name or None)

    def visit_If(self, node: ast.If) -> None:
        test = node.test
        if (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
                isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"):
            for child in node.orelse:
                self.visit(child)
            return
        self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        self.found += [(alias.name, None) for alias in node.names]

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = node.module or ""
        if node.level:
            parent = self.package.split(".")
            parent = parent[:len(parent) - (node.level - 1)]
            base = ".".join([*parent, base] if base else parent)
        self.found += [(base, alias.name) for alias in node.names]


def import_graph() -> dict[str, set[str]]:
    """module -> the package modules it imports.

    `from pkg import name` points at the submodule `pkg.name` when there is one, at the module a
    lazy package re-exports `name` from (its _EXPORTS table), else at `pkg` itself. A lazy
    package's own table is not an edge: it imports nothing until a name is used.
    """
    files = module_names()
    trees = {name: ast.parse(path.read_text(), str(path)) for name, path in files.items()}
    lazy = {name: lazy_exports(tree) for name, tree in trees.items() if files[name].name == "__init__.py"}

    def known(dotted: str) -> str | None:
        while dotted and dotted not in files:
            dotted = dotted.rpartition(".")[0]
        return dotted or None

    graph: dict[str, set[str]] = {}
    for name, tree in trees.items():
        visitor = Imports(name, files[name].name == "__init__.py")
        visitor.visit(tree)
        targets = set()
        for module, imported in visitor.found:
            if not module.startswith("sctranslator"):
                continue
            if imported is not None and f"{module}.{imported}" in files:
                target = f"{module}.{imported}"
            elif imported is not None and imported in lazy.get(module, {}):
                target = lazy[module][imported]
            else:
                target = known(module)
            if target and target != name:
                targets.add(target)
        graph[name] = targets
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
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
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_graph_sees_function_level_and_lazy_imports() -> None:
    graph = import_graph()
    # A function-level import (registry builds backends by module path, but onnx_cache imports the exporter inside
    # its function), and `from sctranslator.export import export_onnx` resolved through export's lazy table.
    assert "sctranslator.export.onnx" in graph["sctranslator.engine.backends.onnx_cache"]
    assert graph["sctranslator.engine.backends"] == {"sctranslator.util.lazy"}  # lazy re-exports only
    assert "sctranslator.graph.contract" in graph["sctranslator.engine.backends.base"]
    visitor = Imports("sctranslator.a.b", is_package=False)
    visitor.visit(ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import sctranslator.x\n"
                            "else:\n    import sctranslator.y\ndef f():\n    from . import z\n    from ..c import d\n"))
    assert visitor.found == [("typing", "TYPE_CHECKING"), ("sctranslator.y", None), ("sctranslator.a", "z"),
                             ("sctranslator.c", "d")]


def test_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_in_the_package() -> None:
    found = cycles(import_graph())
    assert found == [], "import cycles: " + "; ".join(" <-> ".join(component) for component in found)


# A basename may repeat only where it names the same role in each package that has it.
SHARED_ROLES = {
    "__init__.py": "a package",
    "base.py": "the package's contract (Source for sources, Backend for backends)",
    "command.py": "the package's command-line definition, registered by cli/entry.py",
}


def test_no_module_name_is_used_for_two_jobs():
    seen: dict[str, list[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        seen.setdefault(path.name, []).append(str(path.relative_to(PACKAGE)))
    reused = {name: sorted(paths) for name, paths in seen.items() if len(paths) > 1 and name not in SHARED_ROLES}
    assert not reused, f"module names used for more than one job: {reused}"


def test_no_public_name_is_both_a_type_alias_and_a_class():
    """`options` holds the Literal aliases; no class elsewhere in the package may share one of their names."""
    from sctranslator import options

    aliases = {name for name, value in vars(options).items()
               if getattr(value, "__origin__", None) is not None and not name.startswith("_")}
    classes = set()
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text())
        classes |= {node.name for node in tree.body if isinstance(node, ast.ClassDef)}
    assert aliases, "options defines no Literal aliases: the check would prove nothing"
    assert not aliases & classes, f"names both an alias in options.py and a class: {sorted(aliases & classes)}"
