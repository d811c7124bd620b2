"""What an sctranslator ONNX file promises beyond its tensors: precisions, tolerances, metadata keys.

The tensors themselves (names, dtypes, shapes) are the graph contract in graph/contract.py.
Kept apart from the exporter so readers can use it without importing torch's exporter machinery.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import onnx
import torch

from sctranslator.errors import CheckpointError, ExportError
from sctranslator.graph.contract import DECODER_FILE_KEY, PRECISION_NAMES, REEXPORT_HINT

# Format 2: two graphs, the encoder + translator (the file the user names, carrying the metadata)
# and the decoder (a sibling file named in that metadata). Format 1 was one whole-model graph.
FORMAT_VERSION = "2"

# Internal compute dtype per precision; graph IO stays float32 for every precision.
PRECISIONS: dict[str, torch.dtype] = dict(zip(PRECISION_NAMES, (torch.float32, torch.float16, torch.bfloat16),
                                              strict=True))

# Largest accepted max-relative error against the float32 PyTorch model, where the relative
# error is max|onnx - torch| / max|torch| over a batch (scale-relative: element-wise ratios blow
# up on predictions that happen to sit near zero). fp32 is the contract (measured ~5e-7).
# Measured worst cases: fp16 9.7e-4 (tiny fixtures) and 5.2e-4 (random full-size model, real
# onnxruntime CPU); bf16 1.6e-2 (tiny fixtures, onnx reference runtime) and 5.1e-3 (full-size,
# PyTorch bf16 as a proxy). The limits leave 3-10x headroom for trained weights.
TOLERANCES: dict[str, float] = {"fp32": 1e-4, "fp16": 1e-2, "bf16": 5e-2}

META_PREFIX = "sctranslator."
META_CONFIG = META_PREFIX + "config"
META_PANEL = META_PREFIX + "panel"
META_PREPROCESSING = META_PREFIX + "preprocessing"
META_VERSION = META_PREFIX + "version"
META_PRECISION = META_PREFIX + "precision"
META_FORMAT_VERSION = META_PREFIX + "format_version"
META_INPUTS = META_PREFIX + "inputs"
META_OUTPUT = META_PREFIX + "output"
META_FINGERPRINT = META_PREFIX + "fingerprint"
META_GRAPH = META_PREFIX + "graph"  # "encoder" or "decoder" (graph/contract.py GRAPHS)
META_DECODER_FILE = DECODER_FILE_KEY  # in the encoder file: the decoder's file name beside it
META_ENCODER_FILE = META_PREFIX + "encoder_file"  # in the decoder file: the encoder's file name beside it

# Values stored as JSON text (the rest are plain strings).
_JSON_KEYS = (META_CONFIG, META_PANEL, META_PREPROCESSING, META_INPUTS)
_REQUIRED_KEYS = (META_CONFIG, META_VERSION, META_PRECISION, META_FORMAT_VERSION)


def check_precision(precision: str) -> torch.dtype:
    """The torch dtype for a precision name.

    Parameters
    ----------
    precision : str
        "fp32", "fp16" or "bf16".

    Returns
    -------
    torch.dtype
        The dtype.

    Raises
    ------
    ExportError
        Any other name.
    """
    try:
        return PRECISIONS[precision]
    except KeyError:
        raise ExportError(f"unknown precision {precision!r}; choose one of {sorted(PRECISIONS)}") from None


def format_version_problem(path: str, found: str) -> str:
    """The message for a file of another export format version (format 1: the single whole-model graph).

    Parameters
    ----------
    path : str
        The file.
    found : str
        Its format version.

    Returns
    -------
    str
        What is wrong and what to do (export again).
    """
    what = " (one whole-model graph, from an earlier sctranslator)" if found == "1" else ""
    return (f"{path} uses sctranslator ONNX format {found}{what}; this version reads format {FORMAT_VERSION} "
            f"(an encoder graph and a decoder graph); {REEXPORT_HINT}")


def decoder_file_name(path: str | Path) -> str:
    """The decoder graph's file name an export to `path` writes beside it: model.onnx -> model.decoder.onnx.

    Parameters
    ----------
    path : str or pathlib.Path
        The encoder's file.

    Returns
    -------
    str
        A file name (no directory).
    """
    path = Path(path)
    suffix = path.suffix or ".onnx"
    return f"{path.stem if path.suffix else path.name}.decoder{suffix}"


def graph_files(path: str | Path) -> tuple[Path, Path]:
    """The encoder and decoder files of an export, the decoder named by the encoder's metadata.

    Parameters
    ----------
    path : str or pathlib.Path
        The encoder's file.

    Returns
    -------
    tuple of pathlib.Path
        (encoder file, decoder file).

    Raises
    ------
    CheckpointError
        `path` is not an encoder file of this format, or its decoder is missing.
    """
    path = Path(path)
    metadata = read_onnx_metadata(path)
    if metadata.get("graph") != "encoder" or not metadata.get("decoder_file"):
        raise CheckpointError(f"{path} is the {metadata.get('graph') or 'unknown'} graph of an sctranslator "
                              "export; give the file `sctranslator export onnx` was asked to write (the encoder's)")
    decoder = path.parent / str(metadata["decoder_file"])
    if not decoder.is_file():
        raise CheckpointError(f"{path} names its decoder graph {decoder.name}, which is not beside it; both files "
                              f"of an export belong together: copy them together, or {REEXPORT_HINT}")
    return path, decoder


def read_onnx_metadata(path: str | Path) -> dict[str, Any]:
    """The sctranslator metadata of an exported ONNX file, JSON values decoded; weights are not read.

    Parameters
    ----------
    path : str or pathlib.Path
        An ONNX file written by `export_onnx`.

    Returns
    -------
    dict
        config, panel, preprocessing, version, precision, format_version, inputs, output,
        fingerprint, graph ("encoder" or "decoder") and decoder_file / encoder_file (the other
        graph's file name).

    Raises
    ------
    CheckpointError
        The file is missing, not ONNX, has no sctranslator metadata, or is of another format version.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"ONNX model not found: {path}")
    try:
        # External weights are skipped; a single-file model is still parsed whole (~0.5 s per GB).
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError / OSError variants
        raise CheckpointError(f"{path} is not a readable ONNX file ({exc})") from exc
    raw = {prop.key: prop.value for prop in proto.metadata_props if prop.key.startswith(META_PREFIX)}
    missing = [key for key in _REQUIRED_KEYS if key not in raw]
    if missing:
        raise CheckpointError(f"{path} has no sctranslator metadata ({', '.join(missing)} missing); "
                              "was it exported with sctranslator.export.export_onnx?")
    if raw[META_FORMAT_VERSION] != FORMAT_VERSION:
        raise CheckpointError(format_version_problem(str(path), raw[META_FORMAT_VERSION]))
    metadata: dict[str, Any] = {}
    for key, value in raw.items():
        name = key[len(META_PREFIX):]
        if key in _JSON_KEYS:
            try:
                metadata[name] = json.loads(value)
            except json.JSONDecodeError as exc:
                raise CheckpointError(f"{path}: metadata {key} is not valid JSON ({exc})") from exc
        else:
            metadata[name] = value
    return metadata
