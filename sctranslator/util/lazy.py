"""Lazily resolved package exports (PEP 562), so importing a package does not import its heavy parts."""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module
from typing import Any


def lazy_getattr(package: str, exports: dict[str, str]) -> Callable[[str], Any]:
    """A module-level ``__getattr__`` resolving `name` from the module ``exports[name]`` on first use.

    Parameters
    ----------
    package : str
        The package's name, for error messages.
    exports : dict of str to str
        Exported name -> the module defining it.

    Returns
    -------
    callable
        The ``__getattr__``; it raises AttributeError for other names.
    """

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(import_module(module), name)

    return __getattr__
