"""A finished output store opened as an AnnData whose matrices stay on disk.

`translate` returns this instead of reading the store into memory: obs, var and uns are read (they
are small per cell), while X and the arrays in obsm are dask arrays over the Zarr chunks, so a
10-million-cell result costs its obs table, not its 40 GB of predictions.
"""

from __future__ import annotations

import shutil
import uuid
import weakref
from pathlib import Path
from typing import Any

import anndata as ad
import dask.array as da
import numpy as np
import pandas as pd
import zarr

from sctranslator.engine.obs_tables import RENAMED_KEY, restore_names
from sctranslator.errors import StoreError
from sctranslator.util.storage import filesystem, is_url, zarr_store

try:  # anndata >= 0.11
    from anndata.io import read_elem
except ImportError:  # pragma: no cover - anndata 0.10
    from anndata.experimental import read_elem

# Rows per dask chunk: a whole number of store chunks holding about 64 MiB, so computing all of X
# is a few hundred tasks even when the store was written in blocks of a few hundred cells.
_DASK_CHUNK_BYTES = 64 << 20


class TemporaryStore:
    """Owns a temporary output directory and removes it once nothing refers to this object.

    Every lazy array over the store holds a reference (through its dask graph), so the directory
    lives exactly as long as some view of the result does, or until the interpreter exits.

    Parameters
    ----------
    path : str or pathlib.Path
        The directory to remove.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._finalizer = weakref.finalize(self, shutil.rmtree, self.path, True)

    def remove(self) -> None:
        """Remove the directory now (at most once)."""
        self._finalizer()


def _open_root(path: str, storage_options: dict[str, Any] | None = None) -> Any:
    """The store's root group: a local directory, or a URL in object storage (`sctranslator.util.storage`)."""
    if is_url(path):
        return zarr.open_group(zarr_store(path, storage_options), mode="r")
    return zarr.open_group(path, mode="r")


class _StoreArray:
    """One array of the store as dask sees it (shape, dtype, slicing), keeping a temporary store alive."""

    def __init__(self, path: str, name: str, owner: TemporaryStore | None = None,
                 storage_options: dict[str, Any] | None = None) -> None:
        self.path, self.name, self._owner, self.storage_options = path, name, owner, storage_options
        self._array = _open_root(path, storage_options)[name]
        self.shape = tuple(int(n) for n in self._array.shape)
        self.dtype = np.dtype(self._array.dtype)
        self.ndim = len(self.shape)
        self.chunk_rows = int(self._array.chunks[0]) or 1

    def __getitem__(self, key: Any) -> np.ndarray:
        return np.asarray(self._array[key])

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # A copy shipped to another process reads the same store but owns nothing: only the
        # process that made a temporary store removes it.
        return _StoreArray, (self.path, self.name, None, self.storage_options)


def _lazy(path: str, name: str, owner: TemporaryStore | None,
          storage_options: dict[str, Any] | None = None) -> da.Array:
    array = _StoreArray(path, name, owner, storage_options)
    row_bytes = max(1, int(np.prod(array.shape[1:], dtype=np.int64)) * array.dtype.itemsize)
    rows = max(array.chunk_rows, (_DASK_CHUNK_BYTES // row_bytes) // array.chunk_rows * array.chunk_rows)
    chunks = (min(rows, max(1, array.shape[0])), *array.shape[1:])
    return da.from_array(array, chunks=chunks, name=f"sctranslator-{name.replace('/', '-')}-{uuid.uuid4().hex}",
                         asarray=True, fancy=False, inline_array=False)


def _refuse_unfinished(path: Path | str, allow_incomplete: bool, storage_options: dict[str, Any] | None = None) -> None:
    """StoreError for a translate store whose job record says it is not finished (blocks still NaN)."""
    import json

    if is_url(path):
        fs, where = filesystem(str(path), storage_options)
        try:
            record = json.loads(fs.cat_file(f"{where}/.sctranslator-job/job.json"))
        except (OSError, ValueError):
            return
        if record.get("complete") is False and not allow_incomplete:
            try:
                done = len(fs.ls(f"{where}/.sctranslator-job/blocks", detail=False))
            except FileNotFoundError:
                done = 0
            raise StoreError(f"{path} is an unfinished translate output ({done} block(s) written; the rest of X is "
                             "NaN): re-run the same translate command to finish it (it resumes), or pass "
                             "allow_incomplete=True to read what is there")
        return
    path = Path(path)
    try:
        record = json.loads((path / ".sctranslator-job" / "job.json").read_text())
    except (OSError, ValueError):
        return  # no job record: not a resumable translate store (or written by hand)
    if record.get("complete") is False and not allow_incomplete:
        blocks = path / ".sctranslator-job" / "blocks"
        done = sum(1 for entry in blocks.iterdir() if not entry.name.startswith(".")) if blocks.is_dir() else 0
        raise StoreError(f"{path} is an unfinished translate output ({done} block(s) written; the rest of X is "
                         "NaN): re-run the same translate command to finish it (it resumes), or pass "
                         "allow_incomplete=True to read what is there")


def open_predictions(path: str | Path, *, owner: TemporaryStore | None = None,
                     allow_incomplete: bool = False, storage_options: dict[str, Any] | None = None,
                     uns: dict[str, Any] | None = None) -> ad.AnnData:
    """The AnnData of a translate output store, with X (and obsm arrays) read lazily.

    Parameters
    ----------
    path : str or pathlib.Path
        An output store written by `translate` (an AnnData-layout Zarr directory), or its s3:// /
        gs:// URL.
    owner : TemporaryStore or None
        For a temporary store: the object that removes it; the returned arrays keep it alive.
    allow_incomplete : bool
        Read a store whose translate job did not finish (unwritten blocks are NaN); refused otherwise.
    storage_options : dict or None
        fsspec options for a store in object storage.
    uns : dict or None
        The store's uns exactly as a read returns it, known to the caller that just wrote it
        (`engine.stored_uns`); None: read from the store.

    Returns
    -------
    AnnData
        Cells x proteins. ``X`` is a float32 ``dask.array.Array`` over the store's chunks
        (``X.compute()`` or ``np.asarray(X)`` gives a numpy array; ``to_memory()`` an in-memory
        AnnData), the ``obsm`` arrays are dask arrays likewise, and obs, var and uns are in memory.

    Raises
    ------
    StoreError
        The store cannot be opened, lacks X, obs or var, or is unfinished (without allow_incomplete).
    """
    path = str(path)
    _refuse_unfinished(path, allow_incomplete, storage_options)
    try:
        root = _open_root(path, storage_options)
        obs, var = read_elem(root["obs"]), read_elem(root["var"])
        if uns is None:  # the caller that wrote the store passes what this read would give
            uns = read_elem(root["uns"]) if "uns" in root else {}
        x = _lazy(path, "X", owner, storage_options)
        obsm = {}
        if "obsm" in root:
            for key in root["obsm"]:
                member = root["obsm"][key]
                obsm[key] = (_lazy(path, f"obsm/{key}", owner, storage_options) if isinstance(member, zarr.Array)
                             else read_elem(member))
    except (KeyError, OSError, ValueError) as exc:
        raise StoreError(f"{path}: cannot open as a translate output ({type(exc).__name__}: {exc}); "
                         "re-run translate into a new --out") from exc
    record = uns.get("sctranslator") if isinstance(uns, dict) else None
    renamed = record.get(RENAMED_KEY) if isinstance(record, dict) else None
    return ad.AnnData(X=x, obs=restore_names(_frame(obs), renamed), var=_frame(var), uns=uns, obsm=obsm)


def _frame(table: Any) -> pd.DataFrame:
    return table if isinstance(table, pd.DataFrame) else pd.DataFrame(table)
