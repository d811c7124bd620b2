"""AnnData (and MuData) zarr stores, zarr format 2 or 3, read with zarr at the array level.

zarr returns the fill value for a chunk that is absent from the store, so a deleted chunk file would
silently read as zeros. Before slicing, we therefore check that every storage object (chunk, or
shard for sharded v3 arrays) covering the requested range exists.
"""

from __future__ import annotations

import itertools
import os
from typing import Any

import numpy as np
import zarr

from sctranslator.engine.sources.stored import StoredSource
from sctranslator.errors import StoreError

# "auto": a missing chunk of a CSR component is an error (it cannot be absent legitimately), while a
# dense X may lack chunks on purpose (zarr skips writing all-zero chunks by default), so it reads as 0.
MISSING_CHUNK_POLICIES = ("auto", "error", "zeros")


class ZarrSource(StoredSource):
    """An AnnData zarr store directory, or the modality of a MuData zarr store."""

    _TRANSIENT = (*StoredSource._TRANSIENT, "_present")

    def __init__(self, path: str, *, layer: str | None, modality: str, missing_chunks: str = "auto") -> None:
        if missing_chunks not in MISSING_CHUNK_POLICIES:
            raise ValueError(f"missing_chunks must be one of {MISSING_CHUNK_POLICIES}, not {missing_chunks!r}")
        self.missing_chunks = missing_chunks
        super().__init__(path, layer=layer, modality=modality)

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
        strict = self.missing_chunks == "error" or (self.missing_chunks == "auto" and self.matrix_format == "csr")
        if strict:
            self._require_chunks(array, name, lo, hi, rows)
        try:
            return np.asarray(array[lo:hi])
        except Exception as exc:
            raise StoreError(f"{self.path}: reading {self._where(name)}[{lo}:{hi}] for rows {rows[0]}..{rows[1] - 1} "
                             f"failed ({type(exc).__name__}: {exc}); a chunk of that array is corrupted") from exc

    def _require_chunks(self, array: Any, name: str, lo: int, hi: int, rows: tuple[int, int]) -> None:
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
            message += (". If it was written with zarr's write_empty_chunks=False, all-zero chunks are absent on "
                        "purpose: store X as CSR instead, or open it with missing_chunks='zeros'")
        raise StoreError(message)


def chunk_keys(array: Any, lo: int, hi: int) -> list[str]:
    """Store keys of the chunks (shards, when sharded) that hold rows [lo, hi) of `array`, all columns."""
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
    if not hasattr(array, "metadata"):  # zarr 2: the chunk store is a mapping of full keys
        return key in array.chunk_store
    store = array.store
    if isinstance(store, zarr.storage.LocalStore):  # a stat, no event-loop round trip
        return os.path.exists(os.path.join(str(store.root), array.path, key))
    from zarr.core.sync import sync  # other stores only answer asynchronously

    return bool(sync(store.exists(f"{array.path}/{key}" if array.path else key)))
