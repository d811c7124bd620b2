"""One entry point for every model file a user may hold."""

from __future__ import annotations

from pathlib import Path

import torch

from sctranslator.errors import CheckpointError
from sctranslator.model.bundle import CONFIG_FILE, load_bundle, load_state_strictly
from sctranslator.model.network import TranslatorModel
from sctranslator.model.official import load_official_checkpoint
from sctranslator.model.registry import known_model_name, resolve_model, resolve_model_name


def model_from_official(path: str | Path, device: str | torch.device = "cpu") -> TranslatorModel:
    """A model from a published-format ``.pt`` checkpoint, read without executing its pickle.

    Parameters
    ----------
    path : str or pathlib.Path
        The checkpoint.
    device : str or torch.device
        Where the weights go.

    Returns
    -------
    TranslatorModel
        In eval mode; ``model.source`` is `path`.

    Raises
    ------
    CheckpointError
        A file that does not hold a scTranslator model.
    UnsafeCheckpointError
        The pickle names a global outside the allow-list (nothing executed).
    """
    checkpoint = load_official_checkpoint(path)
    model = TranslatorModel.skeleton(checkpoint.config)
    load_state_strictly(model, checkpoint.state_dict, str(path))
    model.source = str(path)
    return model.to(device).eval()


def load_model(path: str | Path, device: str | torch.device = "cpu") -> TranslatorModel:
    """Load a bundle directory, a published-format ``.pt`` checkpoint or a named model, in eval mode.

    Parameters
    ----------
    path : str or pathlib.Path
        A bundle directory (config.json + safetensors weights), an official ``.pt`` file (its pickle is
        read by an allow-list reader and never executed), or a model name ("demo", or one added by
        ``sctranslator convert --name``) when nothing exists at that path.
    device : str or torch.device
        Where the weights go: "cpu", "cuda", "cuda:N" or a torch.device.

    Returns
    -------
    TranslatorModel
        The model in eval mode; ``model.source`` is the path it came from.

    Raises
    ------
    CheckpointError
        The path is missing and no model has that name, a directory without config.json, or a file
        that does not hold a scTranslator model (wrong or missing tensors; empty, truncated or
        corrupted files say which).
    UnsafeCheckpointError
        The pickle names a global outside the allow-list (nothing executed).

    Examples
    --------
    >>> import sctranslator
    >>> model = sctranslator.load_model("demo")
    >>> model.config.max_genes > 0
    True
    """
    given = str(path)
    path = resolve_model(path)
    if path.is_dir():
        if not (path / CONFIG_FILE).exists():
            hint = ""
            if known_model_name(given):
                hint = (f"; a model named {given!r} exists, but a path always wins over a name: run from another "
                        f"folder or give the model's path ({resolve_model_name(given)})")
            raise CheckpointError(f"{path} is a directory but not a model bundle (no {CONFIG_FILE}){hint}")
        return load_bundle(path, device)
    if path.is_file():
        return model_from_official(path, device)
    raise CheckpointError(f"model not found: {path} (expected a bundle directory or an official .pt file)")
