"""The native model bundle: config.json + model.safetensors (+ panel.json, card.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from sctranslator.errors import CheckpointError
from sctranslator.model.config import ModelConfig
from sctranslator.model.network import TranslatorModel
from sctranslator.util.atomic import atomic_write_path, atomic_write_text

BUNDLE_FORMAT = "sctranslator-bundle"
BUNDLE_FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
PANEL_FILE = "panel.json"
CARD_FILE = "card.md"


def _write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def save_model(model: TranslatorModel, directory: str | Path, *, card: str | None = None,
               extra: dict[str, Any] | None = None) -> Path:
    """Write `model` as a bundle directory.

    ``model.preprocessing`` (how inputs and targets were scaled) goes into config.json, the gene and
    protein panels (``model.panel``) into panel.json, the weights into safetensors, and `card`
    (markdown) into card.md. Each file is written atomically.

    Parameters
    ----------
    model : TranslatorModel
        The model.
    directory : str or pathlib.Path
        The bundle directory (created when absent).
    card : str or None
        A model card, markdown.
    extra : dict or None
        Further fields for config.json.

    Returns
    -------
    pathlib.Path
        The bundle directory.

    Raises
    ------
    OutputWriteError
        A file cannot be written (full disk, no permission).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}

    def write_weights(tmp: Path) -> None:
        save_file(state, str(tmp), metadata={"format": BUNDLE_FORMAT})

    atomic_write_path(directory / WEIGHTS_FILE, write_weights)
    config: dict[str, Any] = {
        "format": BUNDLE_FORMAT,
        "format_version": BUNDLE_FORMAT_VERSION,
        "model": model.config.to_dict(),
        "preprocessing": getattr(model, "preprocessing", None),
    }
    if extra:
        config.update(extra)
    _write_json(directory / CONFIG_FILE, config)
    panel_path = directory / PANEL_FILE
    if model.panel:
        _write_json(panel_path, model.panel)
    elif panel_path.exists():
        panel_path.unlink()
    if card is not None:
        atomic_write_text(directory / CARD_FILE, card)
    return directory


def read_bundle_config(directory: str | Path) -> dict[str, Any]:
    """The config.json of a bundle, checked to describe a sctranslator bundle of a format this version reads.

    Parameters
    ----------
    directory : str or pathlib.Path
        The bundle directory.

    Returns
    -------
    dict
        The configuration (architecture, preprocessing, training record).

    Raises
    ------
    CheckpointError
        No config.json, invalid JSON, not a sctranslator bundle, or another format version.
    """
    path = Path(directory) / CONFIG_FILE
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{directory} is not a model bundle: {CONFIG_FILE} is missing") from None
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc}); the bundle is corrupted") from exc
    if config.get("format") != BUNDLE_FORMAT:
        raise CheckpointError(f"{path} does not describe a sctranslator bundle (format={config.get('format')!r})")
    version = config.get("format_version")
    if not isinstance(version, int) or version > BUNDLE_FORMAT_VERSION:
        raise CheckpointError(f"{path} has bundle format version {version!r}; this sctranslator reads "
                              f"up to {BUNDLE_FORMAT_VERSION}: upgrade sctranslator")
    return config


def load_bundle(directory: str | Path, device: str | torch.device = "cpu") -> TranslatorModel:
    """Load a bundle directory written by `save_model`.

    Parameters
    ----------
    directory : str or pathlib.Path
        The bundle directory.
    device : str or torch.device
        Where the weights go.

    Returns
    -------
    TranslatorModel
        In eval mode, with its panels and preprocessing attached.

    Raises
    ------
    CheckpointError
        A missing or corrupted config, weights or panel file, or weights that do not fit the config.
    """
    directory = Path(directory)
    config = read_bundle_config(directory)
    model = TranslatorModel.skeleton(ModelConfig.from_dict(config["model"]))
    try:
        state = load_file(str(directory / WEIGHTS_FILE), device="cpu")
    except FileNotFoundError:
        raise CheckpointError(f"{directory} is not a complete bundle: {WEIGHTS_FILE} is missing") from None
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{directory / WEIGHTS_FILE} is corrupted ({exc})") from exc
    load_state_strictly(model, state, str(directory))
    panel_path = directory / PANEL_FILE
    if panel_path.exists():
        try:
            model.panel = json.loads(panel_path.read_text())
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{panel_path} is not valid JSON ({exc})") from exc
    model.preprocessing = config.get("preprocessing")
    model.source = str(directory)
    return model.to(device).eval()


def load_state_strictly(model: TranslatorModel, state: dict[str, torch.Tensor], where: str) -> None:
    """Load weights into `model`, failing with a readable message on missing, unexpected or mis-shaped tensors.

    A `TranslatorModel.skeleton` takes the tensors (converted to the model's dtype where they differ,
    copied to 64-byte aligned memory where they are not: see `aligned`), so no weight is initialised
    only to be overwritten; a model with weights copies them in.

    Parameters
    ----------
    model : TranslatorModel
        The model, changed in place.
    state : dict of str to torch.Tensor
        The weights.
    where : str
        Where they came from, for the message.

    Raises
    ------
    CheckpointError
        Missing, unexpected or mis-shaped tensors.
    """
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if tuple(expected[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong:
        details = []
        if missing:
            details.append(f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}")
        if unexpected:
            details.append(f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")
        if wrong:
            shapes = [(k, tuple(state[k].shape), tuple(expected[k].shape)) for k in wrong[:3]]
            details.append(f"shape mismatch (name, file, model) {shapes}")
        raise CheckpointError(f"weights in {where} do not fit the configured model: " + "; ".join(details))
    skeleton = any(t.is_meta for t in expected.values())
    with torch.no_grad():
        state = {k: v.to(expected[k].dtype) for k, v in state.items()}
        if skeleton:
            state = {k: aligned(v) for k, v in state.items()}
        model.load_state_dict(state, strict=True, assign=skeleton)


def aligned(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` itself when contiguous at a 64-byte boundary (as PyTorch allocates), else a contiguous copy there.

    The matrix-multiply kernels choose their code path by the operands' alignment: a weight read in
    place from the safetensors file (8-byte aligned) gives results that differ in the last bit from the
    same weight in PyTorch's own memory, where a model built with weights always held them.

    Parameters
    ----------
    tensor : torch.Tensor
        A CPU tensor.

    Returns
    -------
    torch.Tensor
        The same values, contiguous and 64-byte aligned.
    """
    if tensor.is_contiguous() and tensor.data_ptr() % 64 == 0:
        return tensor
    return tensor.clone(memory_format=torch.contiguous_format)
