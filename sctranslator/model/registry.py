"""Models by name: the bundled demo model and bundles a user converted into the model home.

`--model NAME` works wherever a model path does. A name is looked up only when no file or
directory of that name exists, so a path always means the path.

The model home is `$SCTRANSLATOR_MODELS` when set, else `$XDG_DATA_HOME/sctranslator/models`
(`~/.local/share/sctranslator/models`). `sctranslator convert CHECKPOINT --name NAME` writes a
bundle there; `sctranslator models` lists what is available.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from sctranslator.errors import CheckpointError

BUNDLED = {"demo": "tiny demo model trained on 10x PBMC CITE-seq (4,000 HVGs); 14 surface proteins, CLR scale"}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def model_home() -> Path:
    """Where converted models are kept (not created until something is written there).

    Returns
    -------
    pathlib.Path
        $SCTRANSLATOR_MODELS, else $XDG_DATA_HOME/sctranslator/models (~/.local/share by default).
    """
    explicit = os.environ.get("SCTRANSLATOR_MODELS")
    if explicit:
        return Path(explicit).expanduser()
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data_home).expanduser() / "sctranslator" / "models"


def bundled_model_path(name: str) -> Path:
    """The directory of a model shipped inside the package.

    Parameters
    ----------
    name : str
        A model name.

    Returns
    -------
    pathlib.Path
        The directory (it may not exist).
    """
    root = resources.files("sctranslator") / "data" / name / "model"
    return Path(str(root))


def check_model_name(name: str) -> str:
    """Check that `name` is usable as a model name: letters, digits, '.', '_' and '-'.

    Parameters
    ----------
    name : str
        A model name.

    Returns
    -------
    str
        `name`.

    Raises
    ------
    CheckpointError
        Any other name.
    """
    if not _NAME.match(name) or name in (".", ".."):
        raise CheckpointError(f"{name!r} is not a valid model name: use letters, digits, '.', '_' or '-' "
                              "(at most 64 characters, starting with a letter or digit)")
    return name


def resolve_model_name(name: str) -> Path | None:
    """The bundle directory of a model name: bundled first, then converted.

    Parameters
    ----------
    name : str
        A model name.

    Returns
    -------
    pathlib.Path or None
        None for an unknown name.
    """
    if not _NAME.match(name):
        return None
    if name in BUNDLED:
        return bundled_model_path(name)
    converted = model_home() / name
    return converted if converted.is_dir() else None


def known_model_name(name: str) -> bool:
    """Whether `name` names a bundled or converted model.

    Parameters
    ----------
    name : str
        A model name.

    Returns
    -------
    bool
        True when known.
    """
    return resolve_model_name(name) is not None


def resolve_model(spec: str | Path) -> Path:
    """The file or bundle directory that `spec` (a path or a model name) stands for.

    Parameters
    ----------
    spec : str or pathlib.Path
        A path, or a model name when nothing exists at that path.

    Returns
    -------
    pathlib.Path
        The checkpoint file or bundle directory.

    Raises
    ------
    CheckpointError
        Neither an existing path nor a known name (the message names the known models).
    """
    path = Path(spec).expanduser()
    if path.exists():
        return path.absolute()
    named = resolve_model_name(str(spec))
    if named is not None:
        return named
    known = ", ".join(entry.name for entry in list_models()) or "none"
    raise CheckpointError(f"model not found: {spec} is neither a file, a bundle directory, nor a known model "
                          f"name (known: {known}; `sctranslator models` lists them, `sctranslator convert "
                          "CHECKPOINT --name NAME` adds one)")


@dataclass(frozen=True)
class ModelEntry:
    """One named model, as ``sctranslator models`` shows it.

    Parameters
    ----------
    name : str
        The model's name.
    origin : {'bundled', 'converted'}
        Shipped with the package, or converted by the user.
    path : pathlib.Path
        Its bundle directory.
    parameters : int or None
        Its parameter count.
    max_genes : int or None
        Its L.
    genes_in_panel : int or None
        Genes in its panel; None: a published vocabulary model (no gene panel).
    proteins_in_panel : int or None
        Proteins in its panel; None: it queries any protein.
    size_bytes : int
        Size on disk.
    note : str
        A remark (e.g. why it could not be read).
    """

    name: str
    origin: str  # "bundled" or "converted"
    path: Path
    parameters: int | None
    max_genes: int | None
    genes_in_panel: int | None  # None: a published vocabulary model (no gene panel)
    proteins_in_panel: int | None  # None: queries any protein
    size_bytes: int
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        """The entry as JSON-able values.

        Returns
        -------
        dict
            Field -> value.
        """
        return {"name": self.name, "origin": self.origin, "path": str(self.path), "parameters": self.parameters,
                "max_genes": self.max_genes, "genes_in_panel": self.genes_in_panel,
                "proteins_in_panel": self.proteins_in_panel, "size_bytes": self.size_bytes, "note": self.note}


def _describe(name: str, origin: str, path: Path, note: str = "") -> ModelEntry | None:
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None  # not a bundle: ignored (the home may hold other things)
    if config.get("format") != "sctranslator-bundle":
        return None
    model = config.get("model", {})
    panel: dict[str, Any] = {}
    if (path / "panel.json").exists():
        try:
            panel = json.loads((path / "panel.json").read_text())
        except json.JSONDecodeError:
            panel = {}
    genes = panel.get("genes", {}).get("token_ids") if isinstance(panel.get("genes"), dict) else None
    proteins = panel.get("proteins", {}).get("names") if isinstance(panel.get("proteins"), dict) else None
    weights = path / "model.safetensors"
    size = weights.stat().st_size if weights.exists() else 0
    return ModelEntry(name=name, origin=origin, path=path, parameters=_count_parameters(weights),
                      max_genes=model.get("max_genes"), genes_in_panel=len(genes) if genes else None,
                      proteins_in_panel=len(proteins) if proteins else None, size_bytes=size, note=note)


def _count_parameters(weights: Path) -> int | None:
    """Trainable parameter count from the safetensors header (no weights read; buffers left out)."""
    try:
        with open(weights, "rb") as handle:
            header_size = int.from_bytes(handle.read(8), "little")
            header = json.loads(handle.read(header_size))
    except (OSError, ValueError):
        return None
    total = 0
    for key, entry in header.items():
        if key == "__metadata__" or key.endswith("projection_matrix"):  # metadata; random-feature buffers
            continue
        count = 1
        for extent in entry.get("shape", []):
            count *= int(extent)
        total += count
    return total


def list_models() -> list[ModelEntry]:
    """The bundled models, then the converted ones in the model home (sorted by name).

    Returns
    -------
    list of ModelEntry
        One entry per model.
    """
    entries = [entry for name, note in BUNDLED.items()
               if (entry := _describe(name, "bundled", bundled_model_path(name), note)) is not None]
    home = model_home()
    if home.is_dir():
        for child in sorted(home.iterdir()):
            if child.is_dir() and _NAME.match(child.name) and child.name not in BUNDLED:
                entry = _describe(child.name, "converted", child)
                if entry is not None:
                    entries.append(entry)
    return entries
