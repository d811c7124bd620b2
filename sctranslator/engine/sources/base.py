"""The `Source` contract: a read-only view of one cells x genes matrix, served in row blocks.

Subclasses keep only a path and settings in their pickled state (dask.distributed ships them to
worker processes) and open file handles lazily, once per process.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from sctranslator.errors import InputDataError, StoreError

Block = sp.csr_matrix | np.ndarray

# The value types scipy.sparse can hold; blocks of any other numeric type (float16: AnnData stores
# written by memory-saving pipelines) are widened on read, see `block_dtype`.
SPARSE_DTYPES = frozenset(np.dtype(t) for t in (np.bool_, np.int8, np.uint8, np.int16, np.uint16, np.int32,
                                                np.uint32, np.int64, np.uint64, np.float32, np.float64))

# Names are hashed in slices so that fingerprinting ten million cells never builds one giant string.
_HASH_SLICE = 100_000


class Source:
    """Rows (cells) of X, or of a layer, read one block at a time."""

    kind: str
    path: str | None
    n_obs: int
    n_vars: int
    matrix_format: str
    chunk_rows: int | None
    dtype: np.dtype
    nnz: int | None

    def __init__(self) -> None:
        self._fingerprint: dict | None = None

    # --- metadata -------------------------------------------------------------------------------
    @property
    def var(self) -> pd.DataFrame:
        """The var table of the matrix (index = var_names)."""
        raise NotImplementedError

    @property
    def obs_names(self) -> pd.Index:
        """The cells' names, in row order (read once and kept)."""
        raise NotImplementedError

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
        return np.asarray(self.obs_names[start:stop].astype(str), dtype=object)

    def release_obs_names(self) -> None:
        """Drop cached obs names (a no-op for sources that do not cache them)."""
        if hasattr(self, "_obs_names"):
            self._obs_names = None

    def read_obs(self) -> pd.DataFrame:
        """The full obs table, for copying into the output."""
        raise NotImplementedError

    def obs_table(self, columns: Sequence[str] | None = None) -> pd.DataFrame:
        """obs with only `columns`, for the output's obs (``--obs-columns``).

        Parameters
        ----------
        columns : sequence of str or None
            The columns; None: all.

        Returns
        -------
        pandas.DataFrame
            One row per cell.

        Raises
        ------
        InputDataError
            Unknown columns (named).
        """
        return pick_obs_columns(self.read_obs(), columns, self.describe())

    def obsm_arrays(self) -> dict[str, Any]:
        """The input's numeric, dense obsm arrays with one row per cell (``spatial``, ``X_pca``, ...).

        Sparse matrices and tables are left out.

        Returns
        -------
        dict
            Key -> row-sliceable array-like (numpy, h5py, zarr) read on demand.
        """
        return {}

    def describe(self) -> str:
        """How to name this input in a message.

        Returns
        -------
        str
            A short description (the path, or the object's kind).
        """
        return self.path or f"the in-memory {self.kind} input"

    # --- data -----------------------------------------------------------------------------------
    def read_block(self, start: int, stop: int) -> Block:
        """Rows ``[start, stop)`` of the matrix.

        The returned arrays are owned by the caller: modifying them never touches the input.

        Parameters
        ----------
        start : int
            First row.
        stop : int
            Row after the last.

        Returns
        -------
        scipy.sparse.csr_matrix or numpy.ndarray
            ``(stop - start, n_vars)``: CSR for sparse inputs, a C-ordered array for dense ones.

        Raises
        ------
        StoreError
            A missing or corrupted chunk, or an indptr that cannot describe these rows.
        """
        start, stop = self._check_range(start, stop)
        block = self._read_rows(start, stop)
        wide = block_dtype(block.dtype)
        # One place for every source and every job (translate, knockout, attention, finetune): float16
        # values become float32 here, once per block (dense blocks are fresh copies already).
        return block if wide == block.dtype else block.astype(wide)

    def _read_rows(self, start: int, stop: int) -> Block:
        raise NotImplementedError

    def _check_range(self, start: int, stop: int) -> tuple[int, int]:
        start, stop = int(start), int(stop)
        if not 0 <= start <= stop <= self.n_obs:
            raise ValueError(f"row range [{start}, {stop}) is outside [0, {self.n_obs}) of {self.describe()}")
        return start, stop

    # --- identity -------------------------------------------------------------------------------
    def fingerprint(self) -> dict[str, Any]:
        """A JSON-able identity, used to refuse resuming a job against different input data.

        Returns
        -------
        dict
            Kind, location, shape and a hash of the names.
        """
        if self._fingerprint is None:
            self._fingerprint = {
                "kind": self.kind,
                "path": self.path,
                "element": self._element_name(),
                "n_obs": int(self.n_obs),
                "n_vars": int(self.n_vars),
                "matrix_format": self.matrix_format,
                "dtype": str(np.dtype(self.dtype)),
                "nnz": None if self.nnz is None else int(self.nnz),
                "var_names_sha256": hash_names(self.var.index),
                "obs_names_sha256": hash_names(self.obs_names),
            }
        return dict(self._fingerprint)

    def _element_name(self) -> str:
        """Which matrix inside the input is served ("X", "layers/counts", "mod/rna/X", ...)."""
        raise NotImplementedError

    # --- lifetime -------------------------------------------------------------------------------
    def close(self) -> None:
        """Release open file handles; the source reopens them if it is read again."""

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"<{type(self).__name__} {self.kind} {self.describe()} {self._element_name()} "
                f"{self.n_obs} x {self.n_vars} {self.matrix_format} {np.dtype(self.dtype)}>")


def require_unique_cell_names(names: pd.Index, where: str, why: str) -> None:
    """Raise InputDataError when `names` (obs_names) repeat a name: cells are about to be matched by name.

    Parameters
    ----------
    names
        The cell names (obs_names) of the input.
    where
        How to name the input in the message.
    why
        What matches cells by name here (e.g. "--cells picks cells by name").
    """
    if names.is_unique:
        return
    repeated = pd.Index(names[names.duplicated()]).unique()
    shown = ", ".join(repr(str(name)) for name in repeated[:3]) + (" ..." if len(repeated) > 3 else "")
    raise InputDataError(f"{len(repeated)} cell name(s) occur more than once in the obs_names of {where} ({shown}) "
                         f"and {why}; make them unique first: `adata.obs_names_make_unique()` (or "
                         "`mdata.obs_names_make_unique()`), then save the input again")


def pick_obs_columns(obs: pd.DataFrame, columns: Sequence[str] | None, where: str) -> pd.DataFrame:
    """`obs` restricted to `columns`.

    Parameters
    ----------
    obs : pandas.DataFrame
        The obs table.
    columns : sequence of str or None
        The columns; None: all.
    where : str
        Names the input in the message.

    Returns
    -------
    pandas.DataFrame
        The selected columns.

    Raises
    ------
    InputDataError
        Unknown columns (the message lists obs's columns).
    """
    if columns is None:
        return obs
    unknown = [str(c) for c in columns if c not in obs.columns]
    if unknown:
        raise InputDataError(f"--obs-columns: {', '.join(map(repr, unknown))} not in the obs of {where} "
                             f"(columns: {', '.join(map(str, obs.columns)) or 'none'})")
    return obs[list(dict.fromkeys(columns))]


def block_dtype(dtype: np.dtype) -> np.dtype:
    """The dtype a block of stored `dtype` is served in.

    Parameters
    ----------
    dtype : numpy.dtype
        The stored dtype.

    Returns
    -------
    numpy.dtype
        float32 for float16 (exact: every float16 value is a float32 value), the stored dtype otherwise.
    """
    dtype = np.dtype(dtype)
    return np.dtype(np.float32) if dtype == np.float16 else dtype


def carried_obsm(group: Any, n_obs: int) -> dict[str, Any]:
    """The members of an obsm mapping or group that travel into the output.

    Parameters
    ----------
    group : mapping, h5py.Group or zarr.Group
        obsm.
    n_obs : int
        Cells.

    Returns
    -------
    dict
        Numeric dense arrays with `n_obs` rows (scipy matrices, DataFrames and groups such as sparse
        matrices stay behind).
    """
    found = {}
    for key in list(group.keys()) if group is not None else []:
        member = group[key]
        shape, dtype = getattr(member, "shape", None), getattr(member, "dtype", None)
        if (shape is None or dtype is None or isinstance(member, pd.DataFrame) or sp.issparse(member)
                or not hasattr(member, "__getitem__") or "/" in str(key)):  # '/' cannot name a zarr array
            continue
        if len(shape) == 2 and int(shape[0]) == n_obs and np.dtype(dtype).kind in "biuf":
            found[str(key)] = member
    return found


def hash_names(names: Iterable[Any]) -> str:
    """sha256 of the names, NUL-separated (names cannot contain NUL in any store we read).

    Parameters
    ----------
    names : iterable
        The names.

    Returns
    -------
    str
        A hex digest.
    """
    values = np.asarray(pd.Index(names).astype(str))
    digest = hashlib.sha256()
    for lo in range(0, len(values), _HASH_SLICE):
        digest.update("\0".join(values[lo:lo + _HASH_SLICE]).encode("utf-8"))
        digest.update(b"\0")
    digest.update(str(len(values)).encode())
    return digest.hexdigest()


def check_indptr(indptr: np.ndarray, nnz: int, *, where: str, first_row: int, n_obs: int) -> None:
    """Refuse an indptr slice that cannot describe rows of a CSR matrix with `nnz` stored entries.

    Checked before data and indices are read: a corrupt indptr would otherwise ask for absurd ranges,
    or silently shift entries between rows.

    Parameters
    ----------
    indptr : numpy.ndarray
        The slice for the rows read (one more entry than rows).
    nnz : int
        Stored entries of the whole matrix.
    where : str
        Names the input in the message.
    first_row : int
        The slice's first row.
    n_obs : int
        Rows of the matrix.

    Raises
    ------
    StoreError
        A decreasing, negative or out-of-range indptr.
    """
    last_row = first_row + len(indptr) - 2
    rows = f"rows {first_row}..{last_row}"
    steps = np.diff(indptr)
    if steps.size and steps.min() < 0:
        bad = first_row + int(np.argmax(steps < 0))
        raise StoreError(f"{where}: X/indptr decreases at row {bad} ({rows} requested); the store is corrupted")
    lo, hi = int(indptr[0]), int(indptr[-1])
    if lo < 0 or hi > nnz:
        raise StoreError(f"{where}: X/indptr points to entries {lo}..{hi} for {rows}, outside the {nnz} entries "
                         "stored in X/data; the store is truncated or corrupted")
    if first_row == 0 and lo != 0:
        raise StoreError(f"{where}: X/indptr[0] is {lo}, not 0; the store is corrupted")
    if last_row == n_obs - 1 and hi != nnz:
        raise StoreError(f"{where}: X/indptr ends at {hi} but X/data holds {nnz} entries; the store is corrupted")


def check_csr_block(block: Any, expected: int, n_vars: int, *, where: str, first_row: int) -> sp.csr_matrix:
    """Check a CSR row block read by anndata against its indptr slice.

    Parameters
    ----------
    block : scipy.sparse matrix
        The block.
    expected : int
        Entries the (already checked) indptr slice gives these rows.
    n_vars : int
        Columns.
    where : str
        Names the input in the message.
    first_row : int
        The block's first row.

    Returns
    -------
    scipy.sparse.csr_matrix
        The block.

    Raises
    ------
    StoreError
        Another number of entries, or column indices out of range.
    """
    block = block if isinstance(block, sp.csr_matrix) else sp.csr_matrix(block)
    rows = f"rows {first_row}..{first_row + block.shape[0] - 1}"
    if len(block.indices) != expected or len(block.data) != expected:
        raise StoreError(f"{where}: X/indptr says {rows} hold {expected} entries but {len(block.data)} values and "
                         f"{len(block.indices)} column indices were read; the store is truncated or corrupted")
    if block.indices.size:
        lo, hi = int(block.indices.min()), int(block.indices.max())
        if lo < 0 or hi >= n_vars:
            raise StoreError(f"{where}: X/indices holds column {lo if lo < 0 else hi} for {rows}, outside "
                             f"[0, {n_vars}); the store is corrupted")
    return block
