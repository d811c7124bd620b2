"""`open_source`: pick the reader for a path or an in-memory object."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import anndata
import h5py

from sctranslator.engine.sources.base import Source
from sctranslator.engine.sources.hdf5 import H5Source
from sctranslator.engine.sources.memory import AnnDataSource
from sctranslator.engine.sources.zarr_store import ZarrSource
from sctranslator.errors import InputDataError, StoreError

SUPPORTED = ("an .h5ad file, an .h5mu file (MuData), an AnnData or MuData zarr store directory (zarr format 2 or "
             "3), or an in-memory AnnData/MuData")
_ZARR_MARKERS = (".zgroup", "zarr.json")


def open_source(data: Any, *, layer: str | None = None, modality: str = "rna",
                missing_chunks: str = "auto") -> Source:
    """Open `data` for streaming its rows (cells).

    `layer` serves ``layers[layer]`` instead of X; `modality` picks the MuData modality (ignored for
    AnnData inputs). `missing_chunks` says what an absent zarr chunk means: "auto" (default) refuses a
    missing chunk of a CSR matrix as a damaged store but reads absent chunks of a dense X as zeros
    (zarr omits all-zero chunks unless told otherwise); "error" refuses both; "zeros" accepts both.
    """
    if isinstance(data, Source):
        return data
    if isinstance(data, anndata.AnnData):
        return AnnDataSource(data, layer=layer)
    if type(data).__name__ == "MuData" and hasattr(data, "mod"):  # no mudata import just to check
        if modality not in data.mod:
            raise InputDataError(f"the MuData has no modality '{modality}' (it has: {', '.join(data.mod)})")
        return AnnDataSource(data.mod[modality], layer=layer)
    if not isinstance(data, str | os.PathLike):
        raise InputDataError(f"cannot read a {type(data).__name__}: pass {SUPPORTED}")
    path = Path(data).expanduser().absolute()
    if not path.exists():
        raise StoreError(f"{path}: no such file or directory (expected {SUPPORTED})")
    if path.is_dir():
        if not any((path / marker).exists() for marker in _ZARR_MARKERS):
            raise StoreError(f"{path}: a directory but not a zarr store (no .zgroup or zarr.json at its top); "
                             f"expected {SUPPORTED}")
        return ZarrSource(str(path), layer=layer, modality=modality, missing_chunks=missing_chunks)
    if path.stat().st_size == 0:
        raise StoreError(f"{path}: the file is empty (truncated?)")
    try:
        is_hdf5 = h5py.is_hdf5(path)
    except OSError as exc:
        raise StoreError(f"{path}: cannot be read ({exc})") from exc
    if not is_hdf5:
        if path.suffix.lower() == ".zip":
            raise StoreError(f"{path}: zipped zarr stores are not supported; unzip it to a directory first")
        raise StoreError(f"{path}: not an HDF5 file (corrupted, or of an unsupported kind); expected {SUPPORTED}")
    return H5Source(str(path), layer=layer, modality=modality)
