"""One entry point for every model file a user may hold."""

from __future__ import annotations

from pathlib import Path

import torch

from sctranslator.errors import CheckpointError
from sctranslator.model.bundle import CONFIG_FILE, load_bundle, load_state_strictly
from sctranslator.model.network import TranslatorModel
from sctranslator.model.official import load_official_checkpoint
from sctranslator.model.registry import resolve_model


def model_from_official(path: str | Path, device: str | torch.device = "cpu") -> TranslatorModel:
    checkpoint = load_official_checkpoint(path)
    model = TranslatorModel(checkpoint.config)
    load_state_strictly(model, checkpoint.state_dict, str(path))
    model.source = str(path)
    return model.to(device).eval()


def load_model(path: str | Path, device: str | torch.device = "cpu") -> TranslatorModel:
    """Load a bundle directory, a published-format `.pt` checkpoint or a named model, in eval mode.

    `path` is a file or bundle directory, or a model name (`demo`, or one added by `sctranslator
    convert --name`) when nothing exists at that path. `device` is a torch device ("cpu", "cuda:0").
    Raises CheckpointError (missing, unreadable or mis-shaped model) and UnsafeCheckpointError (a
    pickle naming a global outside the allow-list; never executed).
    """
    path = resolve_model(path)
    if path.is_dir():
        if not (path / CONFIG_FILE).exists():
            raise CheckpointError(f"{path} is a directory but not a model bundle (no {CONFIG_FILE})")
        return load_bundle(path, device)
    if path.is_file():
        return model_from_official(path, device)
    raise CheckpointError(f"model not found: {path} (expected a bundle directory or an official .pt file)")
