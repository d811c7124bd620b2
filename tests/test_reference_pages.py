"""The module map the documentation site generates: every module, under the layer pyproject.toml declares."""

from __future__ import annotations

import ast
import importlib.util
import re
import tomllib
from pathlib import Path

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
