"""Copy AnnData elements into an HDF5 group one element at a time, large arrays in row slabs.

The write-backs use this so that neither the input's matrices nor the predictions are ever held
in memory whole: from HDF5 (.h5ad/.h5mu) an element is copied by the HDF5 library itself (object
copy, chunk by chunk); from Zarr, numeric arrays and the parts of sparse matrices are copied in
slabs of about 64 MiB and only tables, strings and `uns` entries are read and written through
anndata's element I/O (one element in memory at a time); an in-memory AnnData is written from
memory element by element (never copied first).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anndata as ad
import h5py
import numpy as np
import pandas as pd

from sctranslator.engine.obs_tables import writable_obs, writable_var
from sctranslator.errors import StoreError

try:  # anndata >= 0.11
    from anndata.io import read_elem, write_elem
except ImportError:  # pragma: no cover - anndata 0.10
    from anndata.experimental import read_elem, write_elem

SLAB_BYTES = 64 << 20
CHUNK_BYTES = 1 << 20
ARRAY_ATTRS = {"encoding-type": "array", "encoding-version": "0.2.0"}
ANNDATA_ATTRS = {"encoding-type": "anndata", "encoding-version": "0.1.0"}
_SPARSE = ("csr_matrix", "csc_matrix")
_NUMERIC = "biuf"


def slab_rows(shape: tuple[int, ...], itemsize: int, align: int = 1) -> int:
    """Rows per slab: about SLAB_BYTES, a multiple of `align` (the source's chunk rows), at least 1.

    Parameters
    ----------
    shape : tuple of int
        The array's shape.
    itemsize : int
        Bytes per element.
    align : int
        Rows to align to.

    Returns
    -------
    int
        Rows per slab.
    """
    row_bytes = max(1, int(np.prod(shape[1:], dtype=np.int64)) * itemsize)
    rows = max(1, SLAB_BYTES // row_bytes)
    return max(align, rows // align * align)


def slabs(n: int, rows: int) -> Iterator[tuple[int, int]]:
    """Consecutive row ranges of `rows` rows covering `n` rows.

    Parameters
    ----------
    n : int
        Rows.
    rows : int
        Rows per slab.

    Yields
    ------
    tuple of int
        ``(start, stop)``.
    """
    for start in range(0, n, rows):
        yield start, min(n, start + rows)


def create_rows_dataset(parent: h5py.Group, key: str, shape: tuple[int, ...], dtype: Any,
                        rows: int) -> h5py.Dataset:
    """An uncompressed float/int dataset chunked by `rows`, tagged as an anndata array.

    Parameters
    ----------
    parent : h5py.Group
        Where.
    key : str
        Its name.
    shape : tuple of int
        Its shape.
    dtype : numpy.dtype
        Its element type.
    rows : int
        Rows per chunk.

    Returns
    -------
    h5py.Dataset
        The empty dataset.
    """
    chunks = (max(1, min(rows, shape[0])), *shape[1:]) if shape[0] and all(shape[1:]) else None
    dataset = parent.create_dataset(key, shape=shape, dtype=dtype, chunks=chunks)
    dataset.attrs.update(ARRAY_ATTRS)
    return dataset


def copy_rows(source: Any, parent: h5py.Group, key: str, attrs: dict[str, Any] | None = None) -> None:
    """Copy an array-like (zarr array, h5py dataset, dask array) into ``parent[key]`` slab by slab.

    Parameters
    ----------
    source : array-like
        The array.
    parent : h5py.Group
        Where.
    key : str
        The dataset's name.
    attrs : dict or None
        Attributes to set on it.
    """
    shape = tuple(int(n) for n in source.shape)
    dtype = np.dtype(source.dtype)
    align = int(source.chunks[0]) if getattr(source, "chunks", None) and isinstance(source.chunks[0], int) else 1
    rows = slab_rows(shape, dtype.itemsize, align)
    # Chunks of about 1 MiB keep later row reads (backed mode) cheap; slabs hold whole chunks.
    chunk = max(1, min(rows, CHUNK_BYTES // max(1, int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize)))
    rows = max(chunk, rows // chunk * chunk)
    target = create_rows_dataset(parent, key, shape, dtype, chunk)
    if attrs is not None:
        target.attrs.update(attrs)
    for start, stop in slabs(shape[0], rows):
        target[start:stop] = np.asarray(source[start:stop])


def _skip_below(skip: set[str], key: str) -> set[str]:
    prefix = key + "/"
    return {path[len(prefix):] for path in skip if path.startswith(prefix)}


def _set_attrs(target: Any, attrs: Any) -> None:
    for name, value in dict(attrs).items():
        target.attrs[name] = value


def copy_group(source: Any, target: h5py.Group, skip: set[str] = frozenset()) -> None:
    """Copy every element of an AnnData (or dict-like) group into `target`, except the `skip` paths.

    Parameters
    ----------
    source : h5py.Group or zarr.Group
        The group.
    target : h5py.Group
        Where.
    skip : set of str
        Paths relative to `source` left out ("obsm/protein_expression").
    """
    _set_attrs(target, source.attrs)
    for key in source:
        if key in skip:
            continue
        below = _skip_below(skip, key)
        member = source[key]
        if below:  # only part of this group is copied
            copy_group(member, target.create_group(key), below)
        elif isinstance(source, h5py.Group):
            source.copy(member, target, name=key)  # HDF5 object copy: chunk by chunk in the library
        else:
            _copy_zarr(member, target, key)


def _copy_zarr(member: Any, target: h5py.Group, key: str) -> None:
    import zarr

    encoding = member.attrs.get("encoding-type")
    if isinstance(member, zarr.Group):
        if encoding in _SPARSE:
            group = target.create_group(key)
            _set_attrs(group, member.attrs)
            for part in ("data", "indices", "indptr"):
                copy_rows(member[part], group, part, attrs={})
        elif encoding in (None, "dict", "raw", "anndata"):
            copy_group(member, target.create_group(key))
        else:  # dataframes, categoricals, nullable and awkward arrays: one element in memory
            write_elem(target, key, read_elem(member))
    elif encoding == "array" and np.dtype(member.dtype).kind in _NUMERIC and len(member.shape):
        copy_rows(member, target, key)
    else:
        write_elem(target, key, read_elem(member))


def write_anndata_elements(adata: ad.AnnData, target: h5py.Group, skip: set[str] = frozenset()) -> dict[str, str]:
    """Write an in-memory (or backed) AnnData's elements into `target` without copying the object.

    X of a backed AnnData is copied from its file by HDF5; everything else comes from memory. obs goes
    through `sctranslator.engine.obs_tables.writable_obs` (missing values kept, '/' in column names
    escaped).

    Parameters
    ----------
    adata : AnnData
        The AnnData.
    target : h5py.Group
        Where.
    skip : set of str
        Element paths left out.

    Returns
    -------
    dict of str to str
        Stored name -> column name, for the renamed obs columns.
    """
    _set_attrs(target, ANNDATA_ATTRS)
    renamed: dict[str, str] = {}
    for key in ("obs", "var", "obsm", "varm", "obsp", "varp", "layers", "uns"):
        if key in skip:
            continue
        value = getattr(adata, key)
        if key == "obs":
            value, renamed = writable_obs(value)
        elif key == "var":
            value = writable_var(value)
        below = _skip_below(skip, key)
        if below or key not in ("obs", "var"):
            value = {name: item for name, item in dict(value).items() if name not in below}
        write_elem(target, key, value)
    if "X" not in skip and adata.X is not None:
        stored = adata.X if adata.isbacked and not adata.is_view else None
        stored = getattr(stored, "group", stored)  # a backed sparse matrix's HDF5 group
        if isinstance(stored, h5py.Dataset | h5py.Group):
            stored.file.copy(stored, target, name="X")
        else:
            write_elem(target, "X", adata.X)
    if "raw" not in skip and adata.raw is not None:
        write_elem(target, "raw", adata.raw)
    return renamed


def write_frame_columns(parent: h5py.Group, key: str, matrix: Any, index: pd.Index,
                        columns: pd.Index) -> None:
    """Write a cells x columns matrix as an anndata DataFrame, one dataset per column, in row slabs.

    This is what ``pd.DataFrame(matrix, index, columns)`` written by anndata looks like, made so
    that the whole matrix is never in memory.

    Parameters
    ----------
    parent : h5py.Group
        Where.
    key : str
        The DataFrame's name.
    matrix : dask, zarr or numpy array
        ``(n_cells, n_columns)``.
    index : pandas.Index
        The cells.
    columns : pandas.Index
        The column names.
    """
    names = [str(name) for name in columns]
    bad = [name for name in names if "/" in name or name == "_index"]
    if bad:
        raise StoreError(f"cannot store columns named {bad} in an HDF5 DataFrame ('/' and '_index' are reserved); "
                         "rename those proteins")
    write_elem(parent, key, pd.DataFrame(index=index))
    group = parent[key]
    group.attrs["column-order"] = names
    n = len(index)
    rows = slab_rows((n, len(names)), 4)
    datasets = [create_rows_dataset(group, name, (n,), np.float32, rows) for name in names]
    for start, stop in slabs(n, rows):
        block = np.asarray(matrix[start:stop], dtype=np.float32)
        for column, dataset in enumerate(datasets):
            dataset[start:stop] = block[:, column]
