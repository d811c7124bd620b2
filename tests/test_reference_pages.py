"""Reference pages of the documentation site: the generated module map, and the errors page naming every error."""

from __future__ import annotations

import ast
import importlib.util
import inspect
import re
import tomllib
from pathlib import Path

import sctranslator.errors as errors

ROOT = Path(__file__).resolve().parents[1]


def _reference_pages():
    spec = importlib.util.spec_from_file_location("reference_pages", ROOT / "docs" / "_ext" / "reference_pages.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_module_map_lists_every_module_under_its_declared_layer() -> None:
    page = _reference_pages().module_map(ROOT / "sctranslator", ROOT / "pyproject.toml")
    contract = next(c for c in tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
                    if c["type"] == "layers")
    sections = re.split(r"^### ", page, flags=re.M)[1:]
    assert len(sections) >= len(contract["layers"])
    for number, layer in enumerate(contract["layers"], 1):
        section = sections[number - 1]
        assert section.startswith(f"Layer {number}: ")
        for package in (m.strip() for m in layer.split("|")):
            listed = f"| `{package}` |" in section or f"| `{package}." in section
            assert listed, f"{package} missing from layer {number}"
    for path in (ROOT / "sctranslator").rglob("*.py"):
        if "data" in path.relative_to(ROOT / "sctranslator").parts:
            continue
        dotted = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        assert page.count(f"| `{dotted}` |") == 1, f"{dotted} is not listed once"
        # its job is its docstring's first paragraph, as written
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        first = re.sub(r"\s+", " ", doc.strip().split("\n\n")[0]).replace("|", "\\|")
        assert f"| `{dotted}` | {first} |" in page


def test_errors_page_names_every_named_error() -> None:
    page = (ROOT / "docs" / "howto" / "errors.md").read_text()
    named = [name for name, value in vars(errors).items()
             if inspect.isclass(value) and issubclass(value, Exception) and value.__module__ == errors.__name__]
    assert "SctranslatorError" in named and len(named) > 10
    assert [name for name in named if f"`{name}`" not in page] == []
