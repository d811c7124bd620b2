"""h5ad and h5mu files, opened with h5py; CSR rows sliced by anndata, dense rows by h5py."""

from __future__ import annotations

import contextlib
from typing import Any

import h5py
import numpy as np

from sctranslator.engine.sources.stored import StoredSource
from sctranslator.errors import StoreError

# A larger chunk cache than HDF5's 1 MiB default: consecutive blocks usually share an edge chunk.
_CHUNK_CACHE_BYTES = 16 * 1024 * 1024


class H5Source(StoredSource):
    """An .h5ad file, or the modality of an .h5mu file (``mod/<modality>``).

    Parameters
    ----------
    path : str
        The file.
    layer : str or None
        Serve ``layers[layer]`` instead of X.
    modality : str or None
        The MuData modality; None: "rna", else the one RNA-like modality.
    use_raw : bool
        Serve ``raw/X`` with ``raw/var``.
    """

    def _open(self) -> h5py.File:
        try:
            return h5py.File(self.path, "r", rdcc_nbytes=_CHUNK_CACHE_BYTES)
        except OSError as exc:
            raise StoreError(f"{self.path}: cannot be opened as HDF5 ({exc}); the file is truncated, corrupted, "
                             "still being written, or not an h5ad/h5mu file") from exc

    def _close_handle(self, handle: Any) -> None:
        with contextlib.suppress(Exception):
            handle.close()

    def _locked(self) -> contextlib.AbstractContextManager:
        # HDF5 serialises every call anyway; one lock per source keeps h5py's state consistent across threads.
        return self._lock

    def _is_array(self, node: Any) -> bool:
        return isinstance(node, h5py.Dataset)

    def _store_kind(self) -> str:
        return "h5ad"

    def _read_array(self, array: Any, name: str, lo: int, hi: int, rows: tuple[int, int]) -> np.ndarray:
        try:
            return array[lo:hi]
        except Exception as exc:
            raise StoreError(f"{self.path}: reading {self._where(name)}[{lo}:{hi}] for rows {rows[0]}..{rows[1] - 1} "
                             f"failed ({type(exc).__name__}: {exc}); the file is truncated or corrupted") from exc
