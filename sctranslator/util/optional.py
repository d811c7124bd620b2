"""Imports of optional dependencies, with an error that names the pip extra to install."""

from __future__ import annotations

from importlib import import_module
from types import ModuleType

from sctranslator.errors import MissingExtraError


def import_optional(module: str, extra: str, purpose: str) -> ModuleType:
    """`module`, imported; MissingExtraError naming `pip install 'sctranslator[extra]'` if it is absent.

    `purpose` completes "... is needed for {purpose}" in the message.
    """
    try:
        return import_module(module)
    except ModuleNotFoundError as exc:
        top = module.split(".")[0]
        if exc.name is None or exc.name.split(".")[0] != top:
            raise  # the module exists but one of *its* imports is broken: show that, unchanged
        raise MissingExtraError(f"{top} is needed for {purpose} but is not installed; "
                                f"install it with: pip install 'sctranslator[{extra}]'") from None
