"""AnnData (and MuData) zarr stores, zarr format 2 or 3, read with zarr at the array level.

zarr returns the fill value for a chunk that is absent from the store, so a deleted chunk file would
silently read as zeros. Before slicing (and before anndata slices CSR rows), we therefore check that
every storage object (chunk, or shard for sharded v3 arrays) covering the requested range exists.
"""

from __future__ import annotations

import itertools
import os
from typing import Any

import numpy as np
import zarr

from sctranslator.engine.sources.stored import StoredSource
from sctranslator.errors import StoreError

# What an absent chunk of a dense X means. zarr omits a chunk whose values all equal the fill value
# (write_empty_chunks=False, zarr's default) and also loses chunks in interrupted copies; its metadata
# cannot tell the two apart (fill_value 0 is also zarr's default), so by default a missing chunk is an
# error and "zeros" is an explicit choice. CSR components (data/indices/indptr) are never legitimately
# absent and are refused under either policy.
MISSING_CHUNK_POLICIES = ("error", "zeros")


class ZarrSource(StoredSource):
    """An AnnData Zarr store directory, or the modality of a MuData Zarr store.

    Parameters
    ----------
    path : str
        The store.
    layer : str or None
        Serve ``layers[layer]`` instead of X.
    modality : str or None
        The MuData modality; None: "rna", else the one RNA-like modality.
    use_raw : bool
        Serve ``raw/X`` with ``raw/var``.
    missing_chunks : {'error', 'zeros'}
        What an absent chunk of a dense X means (see MISSING_CHUNK_POLICIES).
    """

    _TRANSIENT = (*StoredSource._TRANSIENT, "_present")

    def __init__(self, path: str, *, layer: str | None, modality: str | None = None, use_raw: bool = False,
                 missing_chunks: str = "error") -> None:
        if missing_chunks not in MISSING_CHUNK_POLICIES:
            raise ValueError(f"missing_chunks must be one of {MISSING_CHUNK_POLICIES}, not {missing_chunks!r}")
        self.missing_chunks = missing_chunks
        super().__init__(path, layer=layer, modality=modality, use_raw=use_raw)

    def _reset_transient(self) -> None:
        super()._reset_transient()
        self._present: set[tuple[str, str]] = set()  # (array, key) already seen on disk in this process

    def _open(self) -> Any:
        try:
            return zarr.open_group(self.path, mode="r")
        except Exception as exc:
            raise StoreError(f"{self.path}: cannot be opened as a zarr group ({type(exc).__name__}: {exc}); "
                             "the store is incomplete or corrupted") from exc

    def _is_array(self, node: Any) -> bool:
        return isinstance(node, zarr.Array)

    def _store_kind(self) -> str:
        return "zarr"

    def _read_array(self, array: Any, name: str, lo: int, hi: int, rows: tuple[int, int]) -> np.ndarray:
        try:
            return np.asarray(array[lo:hi])
        except Exception as exc:
            raise StoreError(f"{self.path}: reading {self._where(name)}[{lo}:{hi}] for rows {rows[0]}..{rows[1] - 1} "
                             f"failed ({type(exc).__name__}: {exc}); a chunk of that array is corrupted") from exc

    def _require_present(self, array: Any, name: str, lo: int, hi: int, rows: tuple[int, int]) -> None:
        if self.matrix_format == "dense" and self.missing_chunks == "zeros":
            return
        missing = []
        for key in chunk_keys(array, lo, hi):
            if (name, key) in self._present:
                continue
            if chunk_exists(array, key):
                self._present.add((name, key))
            else:
                missing.append(key)
        if not missing:
            return
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        message = (f"{self.path}: {self._where(name)} is missing chunk(s) {shown} covering rows "
                   f"{rows[0]}..{rows[1] - 1}; zarr would silently read them as zeros. The store is incomplete "
                   "(deleted chunk files or an interrupted copy)")
        if self.matrix_format == "dense":
            message += (". If the store was written with zarr's write_empty_chunks=False, all-zero chunks are "
                        "absent on purpose: then read it with --missing-chunks zeros (missing_chunks='zeros')")
        raise StoreError(message)


def chunk_keys(array: Any, lo: int, hi: int) -> list[str]:
    """Store keys of the chunks (shards, when sharded) that hold rows ``[lo, hi)`` of an array, all columns.

    Parameters
    ----------
    array : zarr.Array
        The array.
    lo : int
        First row.
    hi : int
        Row after the last.

    Returns
    -------
    list of str
        The keys.
    """
    if hi <= lo or array.shape[0] == 0:
        return []
    grid = getattr(array, "shards", None) or array.chunks
    first, last = lo // grid[0], (hi - 1) // grid[0]
    others = [range(-(-int(n) // int(g))) for n, g in zip(array.shape[1:], grid[1:], strict=True)]
    coords = ((row, *rest) for row in range(first, last + 1) for rest in itertools.product(*others))
    if hasattr(array, "metadata"):  # zarr >= 3: encodes v2 ("1.0") and v3 ("c/1/0") keys alike
        return [array.metadata.encode_chunk_key(c) for c in coords]
    return [array._chunk_key(c) for c in coords]  # zarr 2: full key, path included


def chunk_exists(array: Any, key: str) -> bool:
    """Whether a chunk key exists in an array's store.

    Parameters
    ----------
    array : zarr.Array
        The array.
    key : str
        A chunk key (see `chunk_keys`).

    Returns
    -------
    bool
        True when present.
    """
    if not hasattr(array, "metadata"):  # zarr 2: the chunk store is a mapping of full keys
        return key in array.chunk_store
    store = array.store
    if isinstance(store, zarr.storage.LocalStore):  # a stat, no event-loop round trip
        return os.path.exists(os.path.join(str(store.root), array.path, key))
    from zarr.core.sync import sync  # other stores only answer asynchronously

    return bool(sync(store.exists(f"{array.path}/{key}" if array.path else key)))
