"""What an sctranslator ONNX file promises beyond its tensors: precisions, tolerances, metadata keys.

The tensors themselves (names, dtypes, shapes) are the graph contract in export/contract.py.
Kept apart from the exporter so readers can use it without importing torch's exporter machinery.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import onnx
import torch

from sctranslator.errors import CheckpointError, ExportError
from sctranslator.export.contract import PRECISION_NAMES

FORMAT_VERSION = "1"

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

# Values stored as JSON text (the rest are plain strings).
_JSON_KEYS = (META_CONFIG, META_PANEL, META_PREPROCESSING, META_INPUTS)
_REQUIRED_KEYS = (META_CONFIG, META_VERSION, META_PRECISION, META_FORMAT_VERSION)


def check_precision(precision: str) -> torch.dtype:
    """The torch dtype for a precision name; ExportError for anything else."""
    try:
        return PRECISIONS[precision]
    except KeyError:
        raise ExportError(f"unknown precision {precision!r}; choose one of {sorted(PRECISIONS)}") from None


def read_onnx_metadata(path: str | Path) -> dict[str, Any]:
    """The sctranslator metadata of an exported ONNX file, JSON values decoded.

    Keys: config, panel, preprocessing, version, precision, format_version, inputs, output,
    fingerprint (the `sctranslator.` prefix dropped). Weights are not read.
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
        raise CheckpointError(f"{path} uses sctranslator ONNX format {raw[META_FORMAT_VERSION]}, this version reads "
                              f"format {FORMAT_VERSION}; re-export it with this sctranslator")
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
