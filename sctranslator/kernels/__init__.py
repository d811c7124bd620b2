"""Numba kernels for the per-cell hot loops: normalise, scale+align, validate, correlate.

The engine calls `prepare_values` (block -> (n_cells, L) float32 model values) and
`scan_block` (NaN/Inf/negative/empty-cell report). The kernels are compiled on first use and
cached on disk (numba ``cache=True``; set ``NUMBA_CACHE_DIR`` to choose where). This package
imports nothing of ours except `sctranslator.errors`.
"""

from __future__ import annotations

from sctranslator.kernels.alignment import TRUNCATED, UNMAPPED, Alignment, build_alignment
from sctranslator.kernels.correlation import pearson_columns, pearson_rows
from sctranslator.kernels.normalize import NORMALIZE_MODES, NormalizeMode, normalize_block
from sctranslator.kernels.prepare import prepare_values
from sctranslator.kernels.scan import BlockScan, scan_block
from sctranslator.kernels.targets import TARGET_SCALINGS, TargetScaling, minmax_rows, scale_targets

__all__ = [
    "NORMALIZE_MODES",
    "TRUNCATED",
    "UNMAPPED",
    "Alignment",
    "BlockScan",
    "NormalizeMode",
    "build_alignment",
    "normalize_block",
    "pearson_columns",
    "pearson_rows",
    "prepare_values",
    "scan_block",
    "TARGET_SCALINGS",
    "TargetScaling",
    "minmax_rows",
    "scale_targets",
]
