"""In-memory AnnData objects (any X: CSR, CSC or other sparse, dense, dask) and backed AnnData."""

from __future__ import annotations

from typing import Any

import anndata
import numpy as np
import pandas as pd
import scipy.sparse as sp

from sctranslator.engine.sources.base import Block, Source, carried_obsm
from sctranslator.engine.sources.hdf5 import H5Source
from sctranslator.errors import InputDataError


class AnnDataSource(Source):
    """Rows of an in-memory AnnData's X (or a layer); pickles with its matrix, since that is where the data lives.

    A backed AnnData (``anndata.read_h5ad(path, backed="r")``) is read through its file with the h5py
    reader, which is picklable and much faster than anndata's backed slicing; its obs and var come from
    the object, so renamed var_names are honoured.

    Parameters
    ----------
    adata : AnnData
        The AnnData.
    layer : str or None
        Serve ``layers[layer]`` instead of X.
    use_raw : bool
        Serve ``.raw.X`` with ``.raw.var``.

    Raises
    ------
    InputDataError
        A missing layer or raw, or an unusable matrix.
    """

    kind = "anndata"

    def __init__(self, adata: anndata.AnnData, *, layer: str | None = None, use_raw: bool = False) -> None:
        super().__init__()
        if use_raw and layer is not None:
            raise InputDataError(f"choose either a layer ('{layer}') or the raw matrix (use_raw), not both")
        if use_raw and adata.raw is None:
            layers = ", ".join(str(k) for k in adata.layers if k is not None) or "none"
            raise InputDataError(f"the AnnData has no .raw; read X or a layer instead (layers: {layers})")
        self.layer = layer
        self.use_raw = bool(use_raw)
        self._csr_cache: sp.csr_matrix | None = None
        self._var = pd.DataFrame(adata.raw.var if use_raw else adata.var).copy()
        self._obs = pd.DataFrame(adata.obs)
        self._obsm = carried_obsm(adata.obsm, adata.n_obs)
        self._file: H5Source | None = None
        self._matrix: Any = None
        if adata.isbacked:
            self._open_backed(adata)
        else:
            self._matrix = _pick_matrix(adata, layer, use_raw)
            self.path = None
            self.n_obs, self.n_vars = (int(n) for n in self._matrix.shape)
            self.matrix_format = "csr" if _is_sparse(self._matrix) else "dense"
            self.dtype = np.dtype(self._matrix.dtype)
            self.nnz = int(self._matrix.nnz) if sp.issparse(self._matrix) else None
            self.chunk_rows = None
        expected = (adata.n_obs, adata.raw.n_vars) if use_raw else adata.shape
        if (self.n_obs, self.n_vars) != expected:
            raise InputDataError(f"the AnnData's matrix is {self.n_obs} x {self.n_vars} but the object is "
                                 f"{expected[0]} x {expected[1]}")

    def _open_backed(self, adata: anndata.AnnData) -> None:
        if adata.is_view:
            raise InputDataError("a view of a backed AnnData cannot be streamed: pass the file path, or "
                                 "`adata[...].to_memory()` to load the subset")
        self._file = H5Source(str(adata.filename), layer=self.layer, use_raw=self.use_raw)
        self.path = self._file.path
        for name in ("n_obs", "n_vars", "matrix_format", "dtype", "nnz", "chunk_rows"):
            setattr(self, name, getattr(self._file, name))

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_csr_cache"] = None  # rebuilt on demand in the receiving process
        state["_obsm"] = {}  # copied into the store by the process that creates it, never by workers
        return state

    @property
    def var(self) -> pd.DataFrame:
        """The genes: the var table whose index (or gene column) names them."""
        return self._var

    @property
    def obs_names(self) -> pd.Index:
        """The cells' names, in row order (read once and kept)."""
        return self._obs.index

    def read_obs(self) -> pd.DataFrame:
        """The full obs table, for copying into the output.

        Returns
        -------
        pandas.DataFrame
            One row per cell.
        """
        return self._obs.copy()

    def obsm_arrays(self) -> dict[str, Any]:
        """The input's numeric, dense obsm arrays with one row per cell (``spatial``, ``X_pca``, ...).

        Sparse matrices and tables are left out.

        Returns
        -------
        dict
            Key -> row-sliceable array-like (numpy, h5py, zarr) read on demand.
        """
        return dict(self._obsm)

    def _element_name(self) -> str:
        if self.use_raw:
            return "raw/X"
        return f"layers/{self.layer}" if self.layer is not None else "X"

    def _read_rows(self, start: int, stop: int) -> Block:
        if self._file is not None:
            return self._file.read_block(start, stop)
        matrix = self._matrix
        if sp.issparse(matrix) and matrix.format != "csr":
            # Row-slicing CSC costs a pass over all entries; convert once instead of once per block.
            if self._csr_cache is None:
                self._csr_cache = sp.csr_matrix(matrix)
            matrix = self._csr_cache
        block = matrix[start:stop]
        return _as_block(block, fresh=block is not matrix)

    def close(self) -> None:
        """Release open file handles; the source reopens them if it is read again."""
        if self._file is not None:
            self._file.close()


def _pick_matrix(adata: anndata.AnnData, layer: str | None, use_raw: bool = False) -> Any:
    # anndata >= 0.13 lists X among the layers under the key None.
    layers = ", ".join(str(k) for k in adata.layers if k is not None) or "none"
    if use_raw:
        matrix = adata.raw.X
    elif layer is not None:
        if layer not in adata.layers:
            raise InputDataError(f"the AnnData has no layer '{layer}' (layers: {layers})")
        matrix = adata.layers[layer]
    else:
        matrix = adata.X
    if matrix is None:
        raise InputDataError(f"the AnnData has no X matrix; choose a layer (layers: {layers})")
    if getattr(matrix, "ndim", 2) != 2:
        raise InputDataError(f"the AnnData's matrix is {matrix.ndim}-D, not cells x genes")
    if isinstance(matrix, np.matrix):
        matrix = np.asarray(matrix)
    return matrix


def _is_sparse(matrix: Any) -> bool:
    if sp.issparse(matrix) or sp.issparse(getattr(matrix, "_meta", None)):  # dask keeps a sample chunk in _meta
        return True
    abc = getattr(anndata, "abc", None)  # anndata >= 0.11: on-disk sparse datasets assigned as X
    return abc is not None and isinstance(matrix, abc.CSRDataset | abc.CSCDataset)


def _as_block(block: Any, *, fresh: bool) -> Block:
    """Turn a row slice into a caller-owned CSR matrix or C-ordered ndarray.

    `fresh` says the slice owns its arrays (scipy returns the matrix itself for a full-range slice).
    """
    if hasattr(block, "compute"):  # dask
        block = block.compute()
    if sp.issparse(block):
        return sp.csr_matrix(block, copy=not fresh)
    return np.array(block, order="C", copy=True)  # numpy row slices are views
