"""Imports of optional dependencies, with an error that names the pip extra to install."""

from __future__ import annotations

from importlib import import_module
from types import ModuleType

from sctranslator.errors import MissingExtraError


def import_optional(module: str, extra: str, purpose: str) -> ModuleType:
    """Import an optional dependency, naming the pip extra that provides it when it is absent.

    Parameters
    ----------
    module : str
        The module to import.
    extra : str
        The sctranslator extra that installs it.
    purpose : str
        Completes "... is needed for {purpose}" in the message.

    Returns
    -------
    types.ModuleType
        The module.

    Raises
    ------
    MissingExtraError
        The module is not installed (the message names ``pip install 'sctranslator[extra]'``).
    """
    try:
        return import_module(module)
    except ModuleNotFoundError as exc:
        top = module.split(".")[0]
        if exc.name is None or exc.name.split(".")[0] != top:
            raise  # the module exists but one of *its* imports is broken: show that, unchanged
        raise MissingExtraError(f"{top} is needed for {purpose} but is not installed; "
                                f"install it with: pip install 'sctranslator[{extra}]'") from None
