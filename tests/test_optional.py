"""Optional dependencies: a missing extra is named in the error, a broken one is not hidden."""

from __future__ import annotations

import sys

import pytest

from sctranslator.errors import MissingExtraError
from sctranslator.util.optional import import_optional


def test_missing_module_names_the_extra() -> None:
    with pytest.raises(MissingExtraError, match=r"pip install 'sctranslator\[triton\]'") as info:
        import_optional("surely_not_installed_module_xyz.grpc", "triton", "the triton backend")
    assert "surely_not_installed_module_xyz" in str(info.value)
    assert isinstance(info.value, ImportError)  # callers catching ImportError keep working


def test_present_module_is_returned() -> None:
    assert import_optional("json", "none", "a test") is sys.modules["json"]


def test_a_broken_import_inside_the_module_is_not_relabelled(tmp_path, monkeypatch) -> None:
    (tmp_path / "halfbroken_pkg.py").write_text("import surely_missing_dependency_abc\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError, match="surely_missing_dependency_abc"):
        import_optional("halfbroken_pkg", "x", "a test")
