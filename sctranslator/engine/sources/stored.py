"""Shared logic of the on-disk sources: AnnData's on-disk layout, read with anndata's own readers.

HDF5 (h5ad/h5mu) and zarr stores lay AnnData out the same way: X is either a 2-D array (dense) or a
CSR group (data/indices/indptr). CSR rows are sliced by anndata (`sparse_dataset(group)[a:b]`), dense
rows by the array library (which is what anndata's backed mode does too); obs and var are read with
anndata's element readers. What this module adds is a thin layer of checks anndata does not make:
the indptr slice is validated before any entry is read (a corrupt indptr would otherwise ask for
absurd ranges or shift entries between rows), subclasses check that the storage covering the
requested entries exists (zarr reads an absent chunk as its fill value), and every backend failure
becomes a StoreError naming the store, the array and the rows. Subclasses supply opening, slicing of
dense arrays (with their own error translation) and locking.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from sctranslator.engine.sources.anndata_io import read_dataframe, read_elem, sparse_dataset
from sctranslator.engine.sources.base import (
    SPARSE_DTYPES,
    Block,
    Source,
    block_dtype,
    carried_obsm,
    check_csr_block,
    check_indptr,
)
from sctranslator.engine.sources.modality import pick_modality
from sctranslator.errors import InputDataError, StoreError

_CONVERT_HINT = ("convert it once, e.g. `adata = anndata.read_h5ad(path); adata.X = adata.X.tocsr(); "
                 "adata.write_h5ad(new_path)` (or write_zarr)")


class StoredSource(Source):
    """A source backed by an h5ad / h5mu file or a Zarr store, opened lazily once per process.

    Parameters
    ----------
    path : str
        The file or store.
    layer : str or None
        Serve ``layers[layer]`` instead of X.
    modality : str or None
        The MuData modality; None: "rna", else the one RNA-like modality.
    use_raw : bool
        Serve ``raw/X`` with ``raw/var`` (and the main obs).

    Raises
    ------
    StoreError
        A damaged file or store.
    InputDataError
        A missing layer, modality or raw.
    """

    # Attributes that are per-process state and never pickled.
    _TRANSIENT = ("_handle", "_pid", "_arrays", "_var", "_obs_names", "_lock")

    def __init__(self, path: str, *, layer: str | None, modality: str | None = None, use_raw: bool = False) -> None:
        super().__init__()
        if use_raw and layer is not None:
            raise InputDataError(f"choose either a layer ('{layer}') or the raw matrix (use_raw), not both")
        self.path = path
        self.layer = layer
        self.modality = modality
        self.use_raw = bool(use_raw)
        self._reset_transient()
        self._inspect()

    # --- subclass hooks -------------------------------------------------------------------------
    def _open(self) -> Any:
        """Open the store read-only and return its root group."""
        raise NotImplementedError

    def _read_array(self, array: Any, name: str, lo: int, hi: int, rows: tuple[int, int]) -> np.ndarray:
        """array[lo:hi], translating the backend's failures into StoreError."""
        raise NotImplementedError

    def _require_present(self, array: Any, name: str, lo: int, hi: int, rows: tuple[int, int]) -> None:
        """Refuse reading entries [lo, hi) of `array` when the storage holding them is absent."""

    def _is_array(self, node: Any) -> bool:
        raise NotImplementedError

    def _store_kind(self) -> str:
        raise NotImplementedError

    def _close_handle(self, handle: Any) -> None:
        """Release the handle opened by _open."""

    def _locked(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    # --- pickling: path and settings only -------------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in self._TRANSIENT}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset_transient()

    def _reset_transient(self) -> None:
        self._handle = None
        self._pid: int | None = None
        self._arrays: dict[str, Any] = {}
        self._var: pd.DataFrame | None = None
        self._obs_names: pd.Index | None = None
        self._lock = threading.RLock()

    # --- handles --------------------------------------------------------------------------------
    def _root(self) -> Any:
        """The store's root group, (re)opened in this process if needed."""
        with self._lock:
            if self._handle is None or self._pid != os.getpid():
                # A handle inherited through fork is unusable here; drop it without closing the parent's.
                self._arrays = {}
                self._handle = self._open()
                self._pid = os.getpid()
            return self._handle

    def _group(self) -> Any:
        """The AnnData group: the store root, or mod/<modality> of a MuData store."""
        root = self._root()
        return root[self._group_key] if self._group_key else root

    def _array(self, name: str) -> Any:
        array = self._arrays.get(name)
        if array is None:
            array = self._arrays[name] = self._group()[name]
        return array

    def _dataset(self) -> Any:
        """anndata's CSR dataset over the served element (indptr not cached: blocks read only their slice)."""
        dataset = self._arrays.get("")
        if dataset is None:
            dataset = self._arrays[""] = sparse_dataset(self._group()[self._element], should_cache_indptr=False)
        return dataset

    def close(self) -> None:
        """Release open file handles; the source reopens them if it is read again."""
        with self._lock:
            if self._handle is not None and self._pid == os.getpid():
                self._close_handle(self._handle)
            self._handle = None
            self._arrays = {}

    @contextlib.contextmanager
    def _reading(self, what: str) -> Iterator[None]:
        """Translate any backend failure while reading metadata into a StoreError naming the store."""
        try:
            with self._locked():
                yield
        except (StoreError, InputDataError):
            raise
        except Exception as exc:
            raise StoreError(f"{self.path}: could not read {what}: {type(exc).__name__}: {exc}; the store is "
                             "truncated, corrupted or was not written by anndata/mudata") from exc

    # --- layout ---------------------------------------------------------------------------------
    def _inspect(self) -> None:
        """Find the matrix and read its shape, format, dtype and chunking (metadata only)."""
        with self._reading("the store layout"):
            root = self._root()
            if "mod" in root and "X" not in root and "obs" in root and not self._is_array(root["mod"]):
                chosen = pick_modality(root["mod"].keys(), self.modality, where=f"{self.path}: the MuData store")
                self.modality = chosen  # pickled: workers read the modality chosen here
                self.kind = "mudata"
                self._group_key = f"mod/{chosen}"
            else:
                self.kind = self._store_kind()
                self._group_key = ""
            group = self._group()
            self._element, self._var_key = self._find_element(group)
            node = group[self._element]
            if self._is_array(node):
                self._inspect_dense(node)
            else:
                self._inspect_sparse(node)

    def _find_element(self, group: Any) -> tuple[str, str]:
        """(matrix key, var key) inside the AnnData group."""
        layers = sorted(group["layers"].keys()) if "layers" in group else []
        if self.use_raw:
            # anndata >= 0.7 writes raw/{X,var}; older files raw.X / raw.var at the top.
            for matrix, var in (("raw/X", "raw/var"), ("raw.X", "raw.var")):
                if matrix in group and var in group:
                    return matrix, var
            raise InputDataError(f"{self.path}: the AnnData has no .raw (raw/X with raw/var); read X or a "
                                 f"layer instead (layers: {', '.join(layers) or 'none'})")
        if self.layer is not None:
            if self.layer not in layers:
                raise InputDataError(f"{self.path}: no layer '{self.layer}' (layers: {', '.join(layers) or 'none'})")
            return f"layers/{self.layer}", "var"
        if "X" not in group:
            raise InputDataError(f"{self.path}: the store has no X matrix; choose a layer "
                                 f"(layers: {', '.join(layers) or 'none'})")
        return "X", "var"

    def _inspect_dense(self, array: Any) -> None:
        if len(array.shape) != 2:
            raise StoreError(f"{self.path}: {self._element_name()} is a {len(array.shape)}-D array, not cells x genes")
        self.n_obs, self.n_vars = (int(n) for n in array.shape)
        self.matrix_format = "dense"
        self.dtype = np.dtype(array.dtype)
        self.nnz = None
        chunks = array.chunks
        self.chunk_rows = int(chunks[0]) if chunks else None

    def _inspect_sparse(self, group: Any) -> None:
        attrs = dict(group.attrs)
        encoding = attrs.get("encoding-type")
        if encoding is None and "h5sparse_format" in attrs:  # files written by anndata < 0.7
            encoding = f"{_text(attrs['h5sparse_format'])}_matrix"
        encoding = _text(encoding) if encoding is not None else None
        if encoding == "csc_matrix":
            raise StoreError(f"{self.path}: {self._element_name()} is stored as CSC (column-compressed); streaming "
                             f"cells needs CSR or dense rows. {_CONVERT_HINT}")
        if encoding != "csr_matrix":
            raise StoreError(f"{self.path}: {self._element_name()} has encoding '{encoding}'; only csr_matrix "
                             "and dense arrays can be streamed by rows")
        shape = attrs.get("shape", attrs.get("h5sparse_shape"))
        if shape is None or len(shape) != 2:
            raise StoreError(f"{self.path}: {self._element_name()} has no valid 'shape' attribute")
        self.n_obs, self.n_vars = (int(n) for n in shape)
        for name in ("data", "indices", "indptr"):
            if name not in group:
                raise StoreError(f"{self.path}: {self._element_name()}/{name} is missing; the store is incomplete")
        data, indices, indptr = group["data"], group["indices"], group["indptr"]
        if indptr.shape[0] != self.n_obs + 1:
            raise StoreError(f"{self.path}: {self._element_name()}/indptr has {indptr.shape[0]} entries, expected "
                             f"n_obs + 1 = {self.n_obs + 1}; the store is truncated or corrupted")
        if data.shape[0] != indices.shape[0]:
            raise StoreError(f"{self.path}: {self._element_name()}/data and /indices differ in length "
                             f"({data.shape[0]} vs {indices.shape[0]}); the store is truncated or corrupted")
        self.matrix_format = "csr"
        self.dtype = np.dtype(data.dtype)
        self.nnz = int(data.shape[0])
        # CSR chunks live in entry space; the rows one data chunk spans, on average, is what to align to.
        chunks = data.chunks
        self.chunk_rows = max(1, round(chunks[0] * self.n_obs / self.nnz)) if chunks and self.nnz else None

    def _element_name(self) -> str:
        return f"{self._group_key}/{self._element}" if self._group_key else self._element

    # --- metadata tables (anndata's readers) ----------------------------------------------------
    @property
    def var(self) -> pd.DataFrame:
        """The genes: the var table whose index (or gene column) names them."""
        if self._var is None:
            with self._reading(self._where(self._var_key)):
                node = self._group()[self._var_key]
                self._var = read_dataframe(node, is_array=self._is_array(node))
        return self._var

    @property
    def obs_names(self) -> pd.Index:
        """The cells' names, in row order (read once and kept)."""
        if self._obs_names is None:
            with self._reading("obs names"):
                obs = self._group()["obs"]
                index_key = _text(obs.attrs.get("_index", "")) if not self._is_array(obs) else ""
                if index_key and index_key in obs:  # read only the index column, not the whole table
                    self._obs_names = pd.Index(read_elem(obs[index_key]))
                else:
                    self._obs_names = read_dataframe(obs, is_array=self._is_array(obs)).index
        return self._obs_names

    def obs_names_block(self, start: int, stop: int) -> np.ndarray:
        """Names of rows ``[start, stop)``; stored sources read only that slice of the obs index.

        A pass over all names in blocks then never holds them all (training).

        Parameters
        ----------
        start : int
            First row.
        stop : int
            Row after the last.

        Returns
        -------
        numpy.ndarray
            Object array of names.
        """
        if self._obs_names is None:
            with self._reading("obs names"):
                obs = self._group()["obs"]
                index_key = _text(obs.attrs.get("_index", "")) if not self._is_array(obs) else ""
                node = obs[index_key] if index_key and index_key in obs else None
                if node is not None and hasattr(node, "shape") and len(node.shape) == 1:
                    # A plain string array: read the slice only (h5py gives bytes, zarr gives str).
                    values = node.asstr()[start:stop] if hasattr(node, "asstr") else node[start:stop]
                    values = np.asarray(values)
                    return (np.char.decode(values, "utf-8") if values.dtype.kind == "S" else values).astype(object)
        return super().obs_names_block(start, stop)

    def read_obs(self) -> pd.DataFrame:
        """The full obs table, for copying into the output.

        Returns
        -------
        pandas.DataFrame
            One row per cell.
        """
        with self._reading("obs"):
            obs = self._group()["obs"]
            return read_dataframe(obs, is_array=self._is_array(obs))

    def obsm_arrays(self) -> dict[str, Any]:
        """The input's numeric, dense obsm arrays with one row per cell (``spatial``, ``X_pca``, ...).

        Sparse matrices and tables are left out.

        Returns
        -------
        dict
            Key -> row-sliceable array-like (numpy, h5py, zarr) read on demand.
        """
        with self._reading("obsm"):
            group = self._group()
            obsm = group["obsm"] if "obsm" in group and not self._is_array(group["obsm"]) else None
            return carried_obsm(obsm, self.n_obs)

    # --- rows -----------------------------------------------------------------------------------
    def _slice(self, name: str, lo: int, hi: int, rows: tuple[int, int]) -> np.ndarray:
        with self._locked():
            array = self._open_array(name)
            self._require_present(array, name, lo, hi, rows)
            return self._read_array(array, name, lo, hi, rows)

    def _open_array(self, name: str) -> Any:
        try:
            return self._array(name)
        except Exception as exc:
            raise StoreError(f"{self.path}: cannot open {self._where(name)}: {type(exc).__name__}: {exc}") from exc

    def _where(self, name: str) -> str:
        return f"{self._group_key}/{name}" if self._group_key else name

    def _read_rows(self, start: int, stop: int) -> Block:
        rows = (start, stop)
        if self.matrix_format == "dense":
            return np.ascontiguousarray(self._slice(self._element, start, stop, rows))
        if start == stop:
            return sp.csr_matrix((0, self.n_vars), dtype=block_dtype(self.dtype))
        element = self._element
        where = f"{self.path} ({self._element_name()})"
        # Our layer: the indptr slice is checked, and the storage under its entries found, before anndata reads.
        indptr = self._slice(f"{element}/indptr", start, stop + 1, rows).astype(np.int64, copy=False)
        check_indptr(indptr, self.nnz, where=where, first_row=start, n_obs=self.n_obs)
        lo, hi = int(indptr[0]), int(indptr[-1])
        if self.dtype not in SPARSE_DTYPES:
            # scipy.sparse holds no float16 (and anndata's reader builds scipy matrices): read the arrays
            # ourselves and widen the values (block_dtype), exactly for float16 -> float32.
            indices = self._slice(f"{element}/indices", lo, hi, rows)
            data = self._slice(f"{element}/data", lo, hi, rows).astype(block_dtype(self.dtype))
            block = sp.csr_matrix((data, indices, indptr - lo), shape=(stop - start, self.n_vars))
            return check_csr_block(block, hi - lo, self.n_vars, where=where, first_row=start)
        with self._locked():
            for name in (f"{element}/indices", f"{element}/data"):
                self._require_present(self._open_array(name), name, lo, hi, rows)
            try:
                block = self._dataset()[start:stop]
            except Exception as exc:
                raise StoreError(
                    f"{self.path}: reading {self._where(element)}/indices and {self._where(element)}/data[{lo}:{hi}] "
                    f"for rows {start}..{stop - 1} failed ({type(exc).__name__}: {exc}); the store is truncated "
                    "or corrupted") from exc
        return check_csr_block(block, hi - lo, self.n_vars, where=where, first_row=start)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
